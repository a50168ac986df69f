"""The layers of DESIGN.md, checked on the source: imports run one way.

L0 (the model: cachefleet/ outside ops/, chaos/, api/, console/ and cli.py) imports nothing of
ours above it; L1 daemons (shard/, sentinel/, router/) import L0 and themselves only; L2
(cachefleet.ops, cachefleet.chaos, cachefleet.api, cachefleet.console, cachefleet.cli,
python -m cachefleet) imports L0, never a daemon (it starts them as processes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("shard", "sentinel", "router")
L2 = (
    "cachefleet.ops",
    "cachefleet.chaos",
    "cachefleet.api",
    "cachefleet.console",
    "cachefleet.cli",
    "cachefleet.__main__",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module imported by the file, lazy imports inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer(module: str) -> str | None:
    top = module.split(".")[0]
    if top in DAEMONS:
        return top  # each daemon is its own island
    if top != "cachefleet":
        return None
    return "L2" if module.startswith(L2) else "L0"


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    # Everything may use the model and itself; nothing else: not L0 -> L1/L2, not a daemon ->
    # another daemon or L2, not L2 -> a daemon.
    return b is None or a == b or b == "L0"


SOURCES = sorted(p for pkg in ("cachefleet", *DAEMONS) for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    src = module_name(path)
    wrong = sorted(
        dst
        for dst in imports(path)
        if dst.split(".")[0] in ("cachefleet", *DAEMONS)
        and (ROOT / dst.split(".")[0]).is_dir()
        and not allowed(src, dst)
    )
    assert not wrong, f"{src} ({layer(src)}) imports upward or sideways: {wrong}"


def test_the_rule_itself() -> None:
    assert allowed("router.server", "cachefleet.layout")
    assert not allowed("router.server", "sentinel.decide")
    assert not allowed("cachefleet.layout", "cachefleet.ops.status")
    assert not allowed("cachefleet.ops.lifecycle", "shard.agent")
    assert allowed("cachefleet.ops.lifecycle", "cachefleet.nodes")
    assert not allowed("shard.agent", "cachefleet.chaos.runner")
