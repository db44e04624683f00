"""The one mapping from errors to RFC 9457 problem+json responses.

No stack trace, SQL, or signature base ever reaches a response: unknown exceptions
become a bare 500 with the request id, and the details go to the log.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap

from exchange.db import data_exception_state, escaped_as_unavailable
from exchange.errors import (
    DatabaseUnavailable,
    ExchangeError,
    InvariantViolation,
    RateLimited,
    ServiceUnavailable,
)
from exchange.logs import get_logger

__all__ = [
    "ERROR_TYPE_BASE",
    "PROBLEM_JSON",
    "Problem",
    "exception_handlers",
    "problem_for",
    "problem_response",
]

PROBLEM_JSON = "application/problem+json"
ERROR_TYPE_BASE = "https://errors.coalition.example/"
_log = get_logger("exchange.problems")


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details with the contract's `code` extension."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None


_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> Response[bytes]:
    problem = Problem(
        type=ERROR_TYPE_BASE + code,
        title=title,
        status=status,
        detail=detail,
        code=code,
        request_id=request_id,
    )
    return Response(
        content=msgspec.json.encode(problem),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _exchange_error(request: Request[Any, Any, Any], exc: ExchangeError) -> Response[bytes]:
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, ServiceUnavailable):
        # Transient (the ledger was busy): say when to retry, as for an unreachable database.
        headers = {"Retry-After": "1"}
    if isinstance(exc, DatabaseUnavailable):
        return _database_unavailable(request, exc)
    if isinstance(exc, InvariantViolation):
        _log.error("invariant_violation", detail=exc.detail, path=request.url.path)
        return problem_response(
            500, exc.code, exc.title, "An internal error occurred.", request_id=_request_id(request)
        )
    if isinstance(exc, ServiceUnavailable):
        # Busy, not broken (the commit queue full, a row held past the lock timeout): an
        # operating condition, logged like an unreachable database, at most once a second.
        suppressed = _unavailable_log.take()
        if suppressed is not None:
            _log.warning(
                "service_unavailable",
                detail=exc.detail,
                path=request.url.path,
                suppressed=suppressed,
            )
    elif exc.status >= 500:
        _log.error("server_error", code=exc.code, detail=exc.detail)
    return problem_response(
        exc.status,
        exc.code,
        exc.title,
        exc.detail,
        headers=headers,
        request_id=_request_id(request),
    )


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra:
        if isinstance(item, dict) and "key" in item:
            source = item.get("source", "parameter")
            source = getattr(source, "value", source)  # litestar's ParamType enum -> "query"
            parts.append(f"{source} parameter '{item['key']}': {item.get('message')}")
    return "; ".join(parts) or "Invalid request parameters."


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code, title = _HTTP_CODES.get(status, ("http_error", "HTTP error"))
    if isinstance(exc, ValidationException):
        # A bad query or path parameter is invalid input like a bad body field: 422
        # validation_error, not litestar's 400, so one endpoint never answers both.
        status, code, title = 422, "validation_error", "Invalid request"
        detail = _validation_detail(exc)
    elif isinstance(exc, NotFoundException):
        detail = "No such resource."
    elif isinstance(exc, MethodNotAllowedException):
        detail = f"{request.method} is not allowed here."
    elif status == 413:
        detail = "Request bodies are limited to 64 KiB."
    elif status >= 500:
        _log.error("http_exception", status=status, detail=exc.detail)
        code, title, detail = "internal_error", "Internal error", "An internal error occurred."
    else:
        detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    return problem_response(
        status, code, title, detail, headers=headers or None, request_id=_request_id(request)
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Everything no store translated. The last net for database errors (the stores map
    them; `exchange.db` classifies what escaped): an outage is a 503, never a 500 (the
    client's retry with the same Idempotency-Key is safe); SQLSTATE class 22 means the
    request carried a value PostgreSQL cannot hold, the caller's input: 422. The rest is
    a bug: 500, the details in the log only."""
    if escaped_as_unavailable(exc):
        return _database_unavailable(request, exc)
    state = data_exception_state(exc)
    if state is not None:
        _log.warning("data_exception", sqlstate=state, path=request.url.path)
        return problem_response(
            422,
            "validation_error",
            "Invalid request",
            "A value in the request cannot be stored or compared (bad characters or range).",
            request_id=_request_id(request),
        )
    _log.exception("unhandled_exception", path=request.url.path, error=type(exc).__name__)
    return problem_response(
        500,
        "internal_error",
        "Internal error",
        "An internal error occurred.",
        request_id=_request_id(request),
    )


class _LogThrottle:
    """At most one line per `interval_s`, saying how many were left out: an outage under
    load must not bury the log (every refused request still has its access line)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def take(self) -> int | None:
        """The number of lines left out since the last one, or None to leave this out."""
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return None
        self._next_at = now + self.interval_s
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


_unavailable_log = _LogThrottle(interval_s=1.0)


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Pool exhausted, database unreachable or read-only: an operating condition, not a
    bug. Logged as a warning without a stack trace, at most once a second."""
    suppressed = _unavailable_log.take()
    if suppressed is not None:
        reason = exc.reason if isinstance(exc, DatabaseUnavailable) else type(exc).__name__
        _log.warning(
            "database_unavailable", reason=reason, path=request.url.path, suppressed=suppressed
        )
    return problem_response(
        503,
        "service_unavailable",
        "Service unavailable",
        "The database is busy, unreachable or not accepting writes; retry shortly with "
        "the same Idempotency-Key.",
        headers={"Retry-After": str(DatabaseUnavailable.retry_after_s)},
        request_id=_request_id(request),
    )


_HANDLERS: ExceptionHandlersMap = {
    ExchangeError: _exchange_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}


def exception_handlers() -> ExceptionHandlersMap:
    return dict(_HANDLERS)


def problem_for(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The response `exception_handlers()` gives `exc`, for a layer outside Litestar's
    exception middleware (`exchange.lean`): the handler of its nearest class."""
    handler = next(_HANDLERS[kind] for kind in type(exc).__mro__ if kind in _HANDLERS)
    return handler(request, exc)
