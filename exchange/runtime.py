"""What a running server process holds: one engine, one clock, the services over them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batching import GroupCommitter
from exchange.clock import Clock
from exchange.config import Settings
from exchange.ratelimit import RateLimiter
from exchange.service import LedgerRequest, LedgerService, Outcome
from partners.gateway import SignatureGateway

__all__ = ["Services", "services_of"]


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    clock: Clock
    ledger: LedgerService
    limiter: RateLimiter
    committer: GroupCommitter
    gateway: SignatureGateway

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, clock: Clock) -> Services:
        ledger = LedgerService(
            engine, clock, points_ttl=timedelta(days=settings.points_ttl_days), tiers=settings.tiers
        )
        # Few batches in flight, so that under load each one carries many postings (per
        # posting, a batch of 30 costs a third of the CPU of a batch of 5); never more
        # than half the pool, which must stay free for reads and authentication.
        committer = GroupCommitter(
            ledger,
            batch_max=settings.group_commit_max,
            concurrency=max(1, min(settings.group_commit_concurrency, settings.db_pool_size // 2)),
        )
        gateway = SignatureGateway(engine, settings.database_url or "")
        return cls(settings, engine, clock, ledger, RateLimiter(settings), committer, gateway)

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        """Finish what is in flight: queued postings, nonces being written."""
        await self.committer.drain()
        await self.gateway.stop()

    async def post(self, request: LedgerRequest) -> Outcome:
        """One posting request, committed together with whatever else is waiting."""
        return await self.committer.submit(request)


def services_of(request: Any) -> Services:
    services: Services = request.app.state.services
    return services
