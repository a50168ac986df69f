"""The router's optional C accelerator (``router/_speedups.pyx``), or None for each function:
not built (no C compiler at install), or turned off with ``CACHEFLEET_ROUTER_C=0`` (to
measure what it saves, or to rule it out). The pure-Python versions in :mod:`router.framing`
and :mod:`router.replies` are the reference and run in its place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

ENV = "CACHEFLEET_ROUTER_C"

split_canonical: Callable[[bytes], tuple[list[tuple[list[bytes], bytes | None]], int]] | None
simple_frames: Callable[[bytes, int, list[bytes]], int] | None
split_canonical = simple_frames = None
if os.environ.get(ENV, "1") != "0":
    with contextlib.suppress(ImportError):  # installed without a C compiler
        from router._speedups import simple_frames, split_canonical  # noqa: F401
