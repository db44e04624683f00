"""Structured logs: one JSON object per line on stderr, carrying the request id.

Everything goes through structlog, including the standard library loggers of uvicorn,
SQLAlchemy and alembic, so an operator greps one format.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from exchange.text import UNPRINTABLE

__all__ = ["REQUEST_ID", "configure_logging", "escape_controls", "get_logger"]

# The id of the HTTP request being served (`exchange.middleware` sets it for the
# request's task), added to every line logged meanwhile. A variable of its own rather
# than structlog's bound context variables: setting and resetting it costs 0.2 µs a
# request, where clearing and binding structlog's took 2.6 (docs/performance.md).
REQUEST_ID: ContextVar[str | None] = ContextVar("exchange_request_id", default=None)


def _add_request_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _add_request_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


# Characters that would end a console line, or make it display as something else.
_UNSAFE = UNPRINTABLE


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def escape_controls(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console lines: escape control, separator and bidi characters in every value (a
    request path with %0A could otherwise forge a log line). JSON escapes them itself;
    a traceback keeps its lines."""
    for key, value in event.items():
        if key != "exception" and isinstance(value, str) and _UNSAFE.search(value):
            event[key] = _UNSAFE.sub(_escape, value)
    return event


def configure_logging(
    level: str = "INFO", log_format: str = "json", *, stream: TextIO | None = None
) -> None:
    """Configure structlog and route stdlib logging through the same renderer, onto
    `stream` (standard error unless given: `exchange demo` gives a file)."""
    renderer: Any
    escaping: list[Any] = []
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        escaping = [escape_controls]
    structlog.configure(
        processors=[
            # First: an event below its logger's level is dropped before any other work
            # (4.7 µs of CPU per access-log line at WARNING without it, 0.5 with it).
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *escaping,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our own access log replaces uvicorn's (it carries the request id and timing), so
    # uvicorn's has no handler and does not propagate: uvicorn then skips building its
    # line's arguments (the path quoted, the client's address) for every response, which
    # it does whenever the logger has a handler, whatever its level.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
