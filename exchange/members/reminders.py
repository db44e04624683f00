"""Expiry reminders: `member.points_expiring` events in the webhook outbox (contract §10).

For each N in EXCHANGE_EXPIRY_REMINDER_DAYS (default 30 and 7) and each lot with points
left that expires within N days, one event per partner the member is linked to. The
event's `dedupe_key` (`member.points_expiring:{lot}:{N}:{partner}`) is UNIQUE and the
insert says ON CONFLICT DO NOTHING, so the event exists exactly once however often the
sweep runs, after restarts, and from any number of server processes at once (a second
concurrent insert waits for the first to commit, then does nothing).

A lot first seen inside several windows (a promotional lot expiring in 5 days) gets the
event of each window it is in (30 and 7), as the contract names one event per member,
lot and N; `data.days` says which window, `data.expires_at` when.

The webhook work delivers from `webhook_outbox`; until it is merged, the events wait
there (written, not yet delivered).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.members._store import insert_expiry_reminders

__all__ = ["EVENT_TYPE", "expiry_reminder_job", "write_expiry_reminders"]

EVENT_TYPE = "member.points_expiring"


async def write_expiry_reminders(engine: AsyncEngine, now: datetime, days: Sequence[int]) -> int:
    """Write the reminders due at `now`; returns how many events were new."""
    written = 0
    async with engine.begin() as conn:
        for n in sorted(set(days), reverse=True):
            written += await insert_expiry_reminders(
                conn, EVENT_TYPE, now=now, until=now + timedelta(days=n), days=n
            )
    return written


def expiry_reminder_job(
    engine: AsyncEngine, days: Sequence[int]
) -> Callable[[datetime], Awaitable[int]]:
    """The scheduler's housekeeping job (settlement.schedule runs it every tick)."""

    async def write_expiry_reminders_job(now: datetime) -> int:
        return await write_expiry_reminders(engine, now, days)

    return write_expiry_reminders_job
