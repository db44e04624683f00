"""What a running server process holds: one engine, one clock, the services over them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import Clock
from exchange.config import Settings
from exchange.ratelimit import RateLimiter
from exchange.service import LedgerRequest, LedgerService, Outcome

__all__ = ["Services", "services_of"]


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    ledger: LedgerService
    limiter: RateLimiter

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, clock: Clock) -> Services:
        ledger = LedgerService(engine, clock, points_ttl=timedelta(days=settings.points_ttl_days))
        return cls(settings, engine, clock, ledger, RateLimiter(settings))

    async def post(self, request: LedgerRequest) -> Outcome:
        """One posting request (the group committer batches these with others)."""
        [outcome] = await self.ledger.submit([request])
        return outcome


def services_of(request: Any) -> Services:
    services: Services = request.app.state.services
    return services
