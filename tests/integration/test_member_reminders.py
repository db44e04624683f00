"""Expiry reminders: one `member.points_expiring` event per member, lot, N and linked
partner, exactly once across repeated sweeps and concurrent server processes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import create_engine
from exchange.members.reminders import EVENT_TYPE, expiry_reminder_job, write_expiry_reminders
from exchange.service import Burn, Earn, LedgerService
from settlement.schedule import run_tick
from settlement.service import SettlementService
from tests.support import add_partner, enrol, post


async def _events(engine: AsyncEngine) -> list[tuple[str, str, int, int, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT partner_id, data->>'member_id', (data->>'days')::int, "
                "(data->>'points')::int, type FROM webhook_outbox ORDER BY 3 DESC, 4, 1"
            )
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


async def _setup(ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock) -> str:
    """A member linked to two partners, with lots expiring in 20 days, in 5 days, in 60
    days and at the default (3 years), and one lot spent to nothing."""
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "grocer")
    now = clock.now()
    for points, days in ((100, 20), (40, 5), (70, 60)):
        await post(ledger, Earn("grocer", member, f"promo-{days}", points=points,
                                expires_at=now + timedelta(days=days)))  # fmt: skip
    await post(ledger, Earn("cinema", member, "film", points=500))
    await post(ledger, Earn("grocer", member, "gone", points=9, expires_at=now + timedelta(days=3)))
    await post(ledger, Burn("grocer", member, 49))  # the 3-day lot (9) and the 5-day (40)
    return member


async def test_reminders_are_written_once_per_member_lot_window_and_partner(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    member = await _setup(ledger, engine, clock)
    assert await write_expiry_reminders(engine, clock.now(), (30, 7)) == 2
    # Only the 20-day lot is within a window; the spent lots have nothing left to remind of.
    assert await _events(engine) == [
        ("cinema", member, 30, 100, EVENT_TYPE),
        ("grocer", member, 30, 100, EVENT_TYPE),
    ]
    assert await write_expiry_reminders(engine, clock.now(), (30, 7)) == 0  # again: nothing

    clock.advance(timedelta(days=14))  # the 20-day lot is now 6 days away
    assert await write_expiry_reminders(engine, clock.now(), (30, 7)) == 2
    assert [(e[0], e[2]) for e in await _events(engine)] == [
        ("cinema", 30), ("grocer", 30), ("cinema", 7), ("grocer", 7),
    ]  # fmt: skip


async def test_concurrent_sweeps_from_two_processes_write_each_event_once(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    member = await _setup(ledger, engine, clock)
    clock.advance(timedelta(days=14))
    other = create_engine(database_url)  # a second server process's own pool
    try:
        for _ in range(3):
            written = await asyncio.gather(
                write_expiry_reminders(engine, clock.now(), (30, 7)),
                write_expiry_reminders(other, clock.now(), (30, 7)),
            )
            assert sum(written) in {0, 4}
    finally:
        await other.dispose()
    events = await _events(engine)
    assert sorted((e[0], e[2]) for e in events) == [
        ("cinema", 7), ("cinema", 30), ("grocer", 7), ("grocer", 30),
    ]  # fmt: skip
    assert {e[1] for e in events} == {member}
    async with engine.connect() as conn:
        keys = (await conn.execute(text("SELECT dedupe_key FROM webhook_outbox"))).scalars().all()
    assert all(key.startswith(f"{EVENT_TYPE}:") for key in keys)


async def test_the_scheduler_tick_writes_reminders(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    await _setup(ledger, engine, clock)
    settlement = SettlementService(engine, clock, ledger)
    job = expiry_reminder_job(engine, (30, 7))
    report = await run_tick(engine, clock, settlement, "daily", [job])
    assert (report.ran, report.failed_jobs) == (True, 0)
    assert len(await _events(engine)) == 2
