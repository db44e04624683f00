"""The in-server scheduler outlives an outage: failed ticks back off, and ticks succeed
again once the database is back, without restarting anything."""

from __future__ import annotations

import asyncio
import itertools
import time
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.embedded import EmbeddedPostgres
from exchange.logs import configure_logging
from exchange.service import LedgerService
from settlement.schedule import Scheduler, TickReport
from settlement.service import SettlementService


class _Recorded(Scheduler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.outcomes: list[tuple[float, bool]] = []

    async def tick(self) -> TickReport:
        try:
            report = await super().tick()
        except Exception:
            self.outcomes.append((time.monotonic(), False))
            raise
        self.outcomes.append((time.monotonic(), True))
        return report


async def _until(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(10_000):
        if check():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return False


async def _admin(postgres: EmbeddedPostgres, sql: str) -> None:
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def test_the_scheduler_backs_off_through_an_outage_and_resumes(
    postgres: EmbeddedPostgres,
    database_url: str,
    engine: AsyncEngine,
    clock: FrozenClock,
    ledger: LedgerService,
) -> None:
    configure_logging("CRITICAL", "json")  # as in production: a failed tick logs one cheap line
    name = urlsplit(database_url).path.lstrip("/")
    scheduler = _Recorded(
        engine=engine,
        clock=clock,
        settlement=SettlementService(engine, clock, ledger),
        cycle="daily",
        interval_s=0.05,
    )
    scheduler.start()
    try:
        assert await _until(lambda: any(ok for _, ok in scheduler.outcomes), 10)
        # The database goes away: nobody may connect, and our connections are killed.
        await _admin(postgres, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await _admin(
            postgres,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        outage = len(scheduler.outcomes)
        assert await _until(
            lambda: [ok for _, ok in scheduler.outcomes[outage:]].count(False) >= 4, 30
        )
        failed = [at for at, ok in scheduler.outcomes[outage:] if not ok][-3:]
        gaps = [later - earlier for earlier, later in itertools.pairwise(failed)]
        assert gaps[1] > gaps[0] * 1.5, f"the scheduler backs off: {gaps}"
        await _admin(postgres, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        back = len(scheduler.outcomes)
        assert await _until(lambda: any(ok for _, ok in scheduler.outcomes[back:]), 10)
        assert scheduler._task is not None
        assert not scheduler._task.done(), "the scheduler is still running"
    finally:
        await _admin(postgres, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await scheduler.stop()
