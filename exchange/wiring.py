"""The composition root: `build_services()` is the one place the exchange's objects are built.

    build_services(settings, engine, clock) -> Services
        ledger      LedgerService
        committer   GroupCommitter      over the ledger (group commit)
        settlement  SettlementService   over the ledger (its sweep)
        scheduler   Scheduler           settlement + the gateway's housekeeping
        gateway     SignatureGateway    partner keys, nonces
        limiter     RateLimiter
        batches     BatchService        batch files, processed through the committer
        webhooks    WebhookService      subscriptions, the delivery worker, the exchange's keys

Who calls it: `exchange.app.create_app` (in the server's lifespan; controllers receive
`services` and `settlement` as litestar dependencies), the command
line (`exchange.cli_support.run_with_services`) and the tools (`exchange.tools`). Nothing
else constructs a service, so a new dependency is wired once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches.service import BatchService
from exchange.batching import GroupCommitter
from exchange.clock import Clock
from exchange.config import Settings
from exchange.members.reminders import expiry_reminder_job
from exchange.members.service import MembersService
from exchange.ratelimit import RateLimiter
from exchange.service import AdjustmentService, LedgerRequest, LedgerService, Outcome
from partners.gateway import SignatureGateway, housekeeping_jobs
from partners.registry import check_stored_keys
from partners.webhooks.service import WebhookService
from settlement.finance import FinanceService
from settlement.journal import ChartOfAccounts
from settlement.schedule import Scheduler
from settlement.service import SettlementService

__all__ = ["Services", "build_services"]


@dataclass
class Services:
    """What one process holds: one engine, one clock, the services over them."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    ledger: LedgerService
    limiter: RateLimiter
    committer: GroupCommitter
    gateway: SignatureGateway
    settlement: SettlementService
    finance: FinanceService
    adjustments: AdjustmentService
    members: MembersService
    scheduler: Scheduler
    batches: BatchService
    webhooks: WebhookService

    async def start(self) -> None:
        """Start the background parts a server needs (not the CLI: it only calls services)."""
        await check_stored_keys(self.engine, self.clock)
        await self.gateway.start()
        if self.settings.scheduler_enabled:
            self.scheduler.start()
        self.batches.start()
        self.webhooks.start()

    async def stop(self) -> None:
        """Finish what is in flight: the scheduler's tick, queued postings, nonces."""
        await self.scheduler.stop()
        await self.webhooks.stop()
        await self.batches.stop()
        await self.committer.drain()
        await self.gateway.stop()

    async def post(self, request: LedgerRequest) -> Outcome:
        """One posting request, committed together with whatever else is waiting."""
        return await self.committer.submit(request)


def build_services(settings: Settings, engine: AsyncEngine, clock: Clock) -> Services:
    """Every service of the exchange over one engine and one clock (no I/O happens here)."""
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
        fill_min=settings.group_commit_fill_min,
        queue_max=settings.group_commit_queue_max,
    )
    settlement = SettlementService(engine, clock, ledger)
    scheduler = Scheduler(
        engine=engine,
        clock=clock,
        settlement=settlement,
        cycle=settings.settlement_cycle,
        interval_s=settings.scheduler_interval_s,
        housekeeping=[
            *housekeeping_jobs(engine),
            expiry_reminder_job(engine, settings.expiry_reminder_days),
        ],
        zone=ZoneInfo(settings.settlement_timezone),
    )
    return Services(
        settings=settings,
        engine=engine,
        clock=clock,
        ledger=ledger,
        limiter=RateLimiter(settings),
        committer=committer,
        gateway=SignatureGateway(engine, settings.database_url or ""),
        settlement=settlement,
        finance=FinanceService(engine, clock, _chart_of_accounts(settings)),
        adjustments=AdjustmentService(engine, clock, ledger),
        members=MembersService(engine, clock, settings),
        scheduler=scheduler,
        batches=BatchService(engine, clock, committer, processors=settings.batch_processors),
        webhooks=WebhookService(engine, clock, settings),
    )


def _chart_of_accounts(settings: Settings) -> ChartOfAccounts:
    return ChartOfAccounts(
        receivable=settings.account_receivable,
        payable=settings.account_payable,
        points_liability=settings.account_points_liability,
        redemption_margin=settings.account_redemption_margin,
        breakage_revenue=settings.account_breakage_revenue,
        rounding=settings.account_rounding,
    )
