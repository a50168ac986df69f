"""The service's identifiers: replication group ids, node group ids, ARNs, node types."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cachefleet import nodetypes
from cachefleet.api.wire import ApiError

_GROUP_ID = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


def check_node_type(raw: str, field: str = "CacheNodeType") -> str:
    """A node type of the request, checked against the one table (cachefleet.nodetypes):
    the service's names (cache.t4g.small …) and the topology's (cache.small …)."""
    if raw not in nodetypes.NODE_TYPES:
        raise ApiError(
            "InvalidParameterValue", f"{field}: {raw!r} is not one of {nodetypes.valid_names()}"
        )
    return raw


def node_size(name: str) -> str:
    """The project's size for a service node type (or a short name as it is)."""
    return nodetypes.size_of(check_node_type(name))


def node_memory(name: str) -> int:
    """Bytes of memory a node of this type gets."""
    return nodetypes.memory(check_node_type(name))


def group_id(raw: str, field: str = "ReplicationGroupId") -> str:
    """A replication group id, lower-cased as the service stores it: 1-40 letters, digits or
    hyphens, starting with a letter, no two hyphens in a row, not ending with one."""
    value = raw.lower()
    if not _GROUP_ID.fullmatch(value) or "--" in value or value.endswith("-"):
        raise ApiError(
            "InvalidParameterValue",
            f"{field}: {raw!r} must be 1-40 letters, digits or hyphens, start with a letter, "
            "and have no two consecutive hyphens nor end with one",
        )
    return value


def node_group_id(shard: int) -> str:
    """Shard 1 is node group 0001, as the service numbers them."""
    return f"{shard:04d}"


def shard_of(raw: str) -> int:
    """The shard of a NodeGroupId (``0002`` or ``2``)."""
    if not raw.isdigit() or len(raw) > 4 or int(raw) < 1:
        raise ApiError(
            "InvalidParameterValue", f"NodeGroupId: {raw!r} must be 1 to 4 digits, like 0001"
        )
    return int(raw)


@dataclass(frozen=True)
class Account:
    """Where ARNs say the resources live (configurable; nothing here depends on them)."""

    region: str = "us-east-1"
    account: str = "000000000000"

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:elasticache:{self.region}:{self.account}:{kind}:{name}"

    def parse_arn(self, arn: str) -> tuple[str, str]:
        """(resource kind, name) of one of this account's ARNs; InvalidARN otherwise."""
        parts = arn.split(":", 6)
        if len(parts) != 7 or parts[:3] != ["arn", "aws", "elasticache"] or not parts[6]:
            raise ApiError("InvalidARN", f"{arn!r} is not an ElastiCache ARN")
        if parts[3] != self.region or parts[4] != self.account:
            raise ApiError(
                "InvalidARN",
                f"{arn!r} is not in this endpoint's region and account "
                f"({self.region}, {self.account})",
            )
        return parts[5], parts[6]
