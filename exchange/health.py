"""`GET /health` (the process is alive) and `GET /ready` (database reachable and migrated)."""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec
from litestar import Controller, Request, get
from sqlalchemy.exc import SQLAlchemyError

from exchange.db import current_revision, head_revision
from exchange.errors import ServiceUnavailable

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

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> Health:
        return Health(status="ok")

    @get("/ready", summary="Readiness: the database is reachable and fully migrated")
    async def ready(self, request: Request[Any, Any, Any]) -> Ready:
        """Unauthenticated, so it must stay cheap under a flood: the head revision is read
        once, and a positive answer is reused for READY_CACHE_S (one query a second at
        most, whatever the request rate)."""
        state = request.app.state
        cached: tuple[float, Ready] | None = state.get("ready_cache")
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_S:
            return cached[1]
        engine = state.engine
        try:
            revision = await current_revision(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise ServiceUnavailable("The database is not reachable.") from exc
        head = _head_revision()
        if revision != head:
            raise ServiceUnavailable(
                f"The database schema is at {revision or 'nothing'}, expected {head}; "
                "run `exchange migrate`."
            )
        ready = Ready(status="ready", schema_revision=revision)
        state.ready_cache = (time.monotonic(), ready)
        return ready
