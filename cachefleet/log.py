"""structlog setup: JSON lines when not a TTY (process logs), readable console otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(process: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger(process).bind(process=process, **bound)
    return log
