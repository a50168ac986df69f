"""Logging: one JSON line per record in each process's own log file, rotated.

Every record, structlog's and the standard library's alike (amqtt, aiomqtt, redis-py, asyncio),
goes through structlog's ProcessorFormatter, so a log file holds one format only. A process
started by :func:`cachefleet.proc.spawn` finds its log file in ``CACHEFLEET_LOG_FILE`` and
writes it itself, rotated at ``MAX_BYTES`` with ``BACKUPS`` old files kept; its raw stdout and
stderr (a crash's traceback) go to the ``.out`` file beside it. Without the variable (a
terminal, a test), records go to stderr: readable on a TTY, JSON otherwise.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Any

import structlog

from cachefleet.proc import LOG_FILE_ENV

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
QUIET = ("amqtt", "transitions", "aiomqtt", "redis", "asyncio", "hpack")


def configure(process: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    path = os.environ.get(LOG_FILE_ENV)
    handler: logging.Handler
    if path:
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        renderer: Any = structlog.processors.JSONRenderer()
    else:
        handler = logging.StreamHandler(sys.stderr)
        renderer = (
            structlog.dev.ConsoleRenderer()
            if sys.stderr.isatty()
            else structlog.processors.JSONRenderer()
        )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger(process).bind(process=process, **bound)
    return log
