"""`GET /health` (the process is alive) and `GET /ready` (database reachable and migrated)."""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec
from litestar import Controller, Request, get

from exchange.db import head_revision, readiness
from exchange.errors import ServiceUnavailable
from exchange.openapi import api

__all__ = ["HealthController"]


class Health(msgspec.Struct, frozen=True):
    status: str


class Ready(msgspec.Struct, frozen=True):
    status: str
    schema_revision: str


READY_CACHE_S = 1.0


@functools.cache
def _head_revision() -> str | None:
    """The migrations' head, read from the scripts once per process (reading them takes
    ~13 ms and blocks the event loop; they do not change under a running server)."""
    return head_revision()


class HealthController(Controller):
    path = "/"
    tags = ["health"]
    security = []

    @get("/health", summary="Liveness: the process answers", opt=api(database=False))
    async def health(self) -> Health:
        return Health(status="ok")

    @get(
        "/ready",
        summary="Readiness: the database is reachable, writable and fully migrated",
        opt=api(errors=(ServiceUnavailable,)),
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Ready:
        """Unauthenticated, so it must stay cheap under a flood: the head revision is read
        once, and a positive answer is reused for READY_CACHE_S (one query a second at
        most, whatever the request rate)."""
        app_state = request.app.state
        cached: tuple[float, Ready] | None = app_state.get("ready_cache")
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            return cached[1]
        # An unreachable database raises DatabaseUnavailable: 503 with Retry-After.
        state = await readiness(app_state.engine)
        if state.read_only:
            raise ServiceUnavailable("The database is read-only: postings cannot be written.")
        revision, head = state.revision, _head_revision()
        if revision is None or revision != head:
            raise ServiceUnavailable(
                f"The database schema is at {revision or 'nothing'}, expected {head}; "
                "run `exchange migrate`."
            )
        ready = Ready(status="ready", schema_revision=revision)
        app_state.ready_cache = (time.monotonic(), ready)
        return ready
