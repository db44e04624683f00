"""`GET /health` (the process is alive) and `GET /ready` (database reachable and migrated)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from exchange.db import head_revision, readiness
from exchange.errors import ServiceUnavailable

__all__ = ["HealthController"]


class Health(msgspec.Struct, frozen=True):
    status: str


class Ready(msgspec.Struct, frozen=True):
    status: str
    schema_revision: str


class HealthController(Controller):
    path = "/"
    tags = ["health"]
    security = []

    @get("/health", summary="Liveness: the process answers")
    async def health(self) -> Health:
        return Health(status="ok")

    @get("/ready", summary="Readiness: the database is reachable, writable and fully migrated")
    async def ready(self, request: Request[Any, Any, Any]) -> Ready:
        # An unreachable database raises DatabaseUnavailable: 503 with Retry-After.
        state = await readiness(request.app.state.engine)
        if state.read_only:
            raise ServiceUnavailable("The database is read-only: postings cannot be written.")
        revision, head = state.revision, head_revision()
        if revision is None or revision != head:
            raise ServiceUnavailable(
                f"The database schema is at {revision or 'nothing'}, expected {head}; "
                "run `exchange migrate`."
            )
        return Ready(status="ready", schema_revision=revision)
