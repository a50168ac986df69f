"""One exception root; subclasses carry the data callers need (never parse strings)."""

from __future__ import annotations


class CachefleetError(Exception):
    """Root of every error cachefleet raises on purpose."""


class InvalidInput(CachefleetError):
    """Input from outside a process (a file, a bus message) that does not fit its schema:
    names where it came from, the field and the reason, in one line."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = f"field `{field}`: " if field else ""
        super().__init__(f"{source}: {where}{message}")


class TopologyError(InvalidInput):
    """A topology file is invalid."""


class ScenarioError(InvalidInput):
    """A chaos scenario file is invalid."""


class EngineNotFound(CachefleetError):
    """No engine binary could be resolved for the topology's engine."""


class BusError(CachefleetError):
    """The control bus could not be reached or answered something unusable."""


class StateError(CachefleetError):
    """The state directory does not hold what a command needs (unknown cluster, ...)."""


class ClusterTimeout(CachefleetError):
    """A step did not converge within its deadline."""

    def __init__(self, step: str, seconds: float, detail: str = "") -> None:
        self.step = step
        self.seconds = seconds
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"{step} did not complete within {seconds:.0f}s{extra}")
