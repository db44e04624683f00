"""Outermost ASGI layer: a request id on every request, and one access-log line each."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from exchange import metrics
from exchange.logs import REQUEST_ID, get_logger

__all__ = ["RequestContext"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_log = get_logger("exchange.access")
# The same logger's level, asked before the line's fields are gathered: at WARNING (as
# benchmarked) an access line costs nothing but this check.
_access = logging.getLogger("exchange.access")


class RequestContext:
    """Wraps the whole application (404s and 405s included, which never reach route
    middleware): binds `request_id` for every log line of the request, echoes it in
    the `X-Request-Id` response header, and logs method, path, status and duration."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        bound = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # By route template, never the raw path: one series per endpoint, not per id.
            route = scope.get("path_template") or "unmatched"
            metrics.observe_request(scope["method"], route, status, elapsed)
            if _access.isEnabledFor(logging.INFO):
                _log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    **_bound_identity(scope),
                )
            REQUEST_ID.reset(bound)


def _incoming_request_id(scope: Any) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def _bound_identity(scope: Any) -> dict[str, str]:
    """Who made the request, once authentication has put it in the scope state."""
    state = scope.get("state", {})
    caller = state.get("caller_log")
    return caller if isinstance(caller, dict) else {}
