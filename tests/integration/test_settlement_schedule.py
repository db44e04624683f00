"""Scheduled settlement: catch-up after downtime, exactly once across
processes, housekeeping jobs, and the scheduler's start and stop inside the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.app import create_app
from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine
from exchange.service import Burn, Earn, LedgerService
from settlement.schedule import SCHEDULER_LOCK_KEY, Scheduler, run_tick
from settlement.service import SettlementService
from tests.conftest import running
from tests.support import add_partner, assert_ledger_verifies, enrol, post


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@pytest.fixture(autouse=True)
async def _verify_after(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    await assert_ledger_verifies(engine)


def _service(engine: AsyncEngine, clock: FrozenClock) -> SettlementService:
    return SettlementService(
        engine, clock, LedgerService(engine, clock, points_ttl=timedelta(1095))
    )


async def _runs(engine: AsyncEngine) -> list[tuple[str, datetime, datetime]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT run_id, period_start, period_end FROM settlement_runs ORDER BY 3")
        )
        return [(row.run_id, row.period_start, row.period_end) for row in rows]


async def test_nothing_to_settle_on_an_empty_ledger(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    report = await run_tick(engine, clock, _service(engine, clock), "daily")
    assert report.ran
    assert report.settled == []


async def test_two_schedulers_catch_up_missed_days_exactly_once(
    engine: AsyncEngine, database_url: str, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=1000))  # Mon 23rd, 10:00
    clock.set(_at("2026-11-24T15:00"))
    await post(ledger, Burn("grocer", member, 100))
    clock.set(_at("2026-11-27T03:00"))  # the server was down since the 24th

    other_engine = create_engine(database_url, pool_size=5)  # a second server process
    try:
        reports = await asyncio.gather(
            run_tick(engine, clock, _service(engine, clock), "daily"),
            run_tick(other_engine, clock, _service(other_engine, clock), "daily"),
        )
    finally:
        await other_engine.dispose()

    settled = [run_id for report in reports for run_id in report.settled]
    expected = [
        "stl_20261124T000000Z",
        "stl_20261125T000000Z",
        "stl_20261126T000000Z",
        "stl_20261127T000000Z",
    ]
    assert sorted(settled) == expected  # each period once, by one of the two
    runs = await _runs(engine)
    assert [run_id for run_id, _, _ in runs] == expected
    assert runs[0][1] == datetime(1970, 1, 1, tzinfo=UTC)  # the first run starts at the start
    assert all(runs[i][2] == runs[i + 1][1] for i in range(len(runs) - 1))

    service = _service(engine, clock)
    first, second = await service.get_run(expected[0]), await service.get_run(expected[1])
    assert first.settlement.lines[0].issued_points == 1000
    assert second.settlement.lines[0].redeemed_points == 100
    for run_id in expected:
        assert (await service.get_run(run_id)).header.reconciled

    again = await run_tick(engine, clock, service, "daily")
    assert (again.ran, again.settled) == (True, [])
    clock.advance(timedelta(days=1))
    later = await run_tick(engine, clock, service, "daily")
    assert later.settled == ["stl_20261128T000000Z"]


async def test_weekly_cycle_starts_at_the_monday_before_the_first_posting(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    clock.set(_at("2026-11-25T10:00"))  # a Wednesday
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10))
    clock.set(_at("2026-12-08T01:00"))
    report = await run_tick(engine, clock, _service(engine, clock), "weekly")
    assert report.settled == ["stl_20261130T000000Z", "stl_20261207T000000Z"]


async def test_a_manual_run_past_the_boundary_is_not_repeated(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10))
    clock.set(_at("2026-11-25T12:00"))
    service = _service(engine, clock)
    await service.run_settlement(_at("2026-11-24T06:00"))  # an ad-hoc cut-off
    report = await run_tick(engine, clock, service, "daily")
    assert report.settled == ["stl_20261125T000000Z"]  # the next boundary after the run


async def test_housekeeping_jobs_run_each_tick_and_a_failure_stops_no_other(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    seen: list[tuple[str, datetime]] = []

    async def purge_nonces(now: datetime) -> int:
        seen.append(("nonces", now))
        return 3

    async def broken(now: datetime) -> None:
        raise RuntimeError("disk full")

    async def purge_sessions(now: datetime) -> int:
        seen.append(("sessions", now))
        return 0

    jobs = (purge_nonces, broken, purge_sessions)
    report = await run_tick(engine, clock, _service(engine, clock), "daily", jobs)
    assert report.failed_jobs == 1
    assert seen == [("nonces", clock.now()), ("sessions", clock.now())]


async def test_a_held_scheduler_lock_makes_the_tick_skip(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10))
    clock.set(_at("2026-11-25T01:00"))
    calls: list[datetime] = []

    async def job(now: datetime) -> None:
        calls.append(now)

    async with engine.connect() as holder, holder.begin():
        await holder.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEDULER_LOCK_KEY}
        )
        report = await run_tick(engine, clock, _service(engine, clock), "daily", (job,))
    assert (report.ran, report.settled, calls) == (False, [], [])
    assert await _runs(engine) == []


async def test_the_app_starts_and_stops_its_scheduler(
    database_url: str, clock: FrozenClock, engine: AsyncEngine, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10))
    clock.set(_at("2026-11-24T00:30"))
    settings = Settings(
        database_url=database_url,
        public_url="https://exchange.test",
        scheduler_enabled=True,
        scheduler_interval_s=1,
        log_level="WARNING",
    )
    app = create_app(settings, clock=clock)
    ticked = asyncio.Event()

    async def job(now: Any) -> None:
        ticked.set()

    async with running(app):
        scheduler: Scheduler = app.state.scheduler
        scheduler.add_housekeeping(job)
        await asyncio.wait_for(ticked.wait(), timeout=10)
    assert [run_id for run_id, _, _ in await _runs(engine)] == ["stl_20261124T000000Z"]


async def test_stopping_waits_for_the_tick_in_progress(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """A stopping server lets the tick finish its work (here a housekeeping job that is
    half done) instead of cutting it off; the loop then ends without another tick."""
    scheduler = Scheduler(
        engine=engine,
        clock=clock,
        settlement=_service(engine, clock),
        cycle="daily",
        interval_s=3600,
    )
    inside = asyncio.Event()
    finished: list[str] = []

    async def slow_job(now: datetime) -> int:
        inside.set()
        await asyncio.sleep(0.5)  # work in flight when stop() is called
        finished.append("slow_job")
        return 1

    scheduler.add_housekeeping(slow_job)
    scheduler.start()
    await asyncio.wait_for(inside.wait(), 10)
    await asyncio.wait_for(scheduler.stop(), 10)
    assert finished == ["slow_job"], "stop cancelled the tick instead of letting it finish"


async def test_the_scheduler_cuts_riga_months_at_local_midnight_across_dst(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """Europe/Riga: October ends at 22:00 UTC (winter time since the 25th), March at
    21:00 UTC (summer time since the 28th). Postings half an hour either side of the
    October cut-off land in the months their local time says."""
    riga = ZoneInfo("Europe/Riga")
    await add_partner(engine, clock, "grocer")
    clock.set(_at("2026-10-20T10:00"))
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "mid-october", points=100))
    clock.set(_at("2026-10-31T21:30"))  # 23:30 on 31 October in Riga
    await post(ledger, Earn("grocer", member, "last-evening", points=20))
    clock.set(_at("2026-10-31T22:30"))  # 00:30 on 1 November in Riga
    await post(ledger, Earn("grocer", member, "first-night", points=3))

    clock.set(_at("2026-11-01T06:00"))
    first = await run_tick(engine, clock, _service(engine, clock), "monthly", zone=riga)
    clock.set(_at("2027-04-01T06:00"))
    later = await run_tick(engine, clock, _service(engine, clock), "monthly", zone=riga)

    assert first.settled == ["stl_20261031T220000Z"]
    assert later.settled == [
        "stl_20261130T220000Z",
        "stl_20261231T220000Z",
        "stl_20270131T220000Z",
        "stl_20270228T220000Z",
        "stl_20270331T210000Z",
    ]
    async with engine.connect() as conn:
        issued = dict(
            (await conn.execute(text("SELECT run_id, issued_points FROM settlement_runs"))).all()
        )
    assert (issued["stl_20261031T220000Z"], issued["stl_20261130T220000Z"]) == (120, 3)
    runs = await _runs(engine)
    assert [(start, end) for _, start, end in runs[1:3]] == [
        (_at("2026-10-31T22:00"), _at("2026-11-30T22:00")),
        (_at("2026-11-30T22:00"), _at("2026-12-31T22:00")),
    ]
