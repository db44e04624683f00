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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["EVENT_TYPE", "expiry_reminder_job", "write_expiry_reminders"]

EVENT_TYPE = "member.points_expiring"

# The lots come from the partial index ix_lots_expires_at_open (remaining > 0, by
# expiry): the sweep reads only lots expiring inside the widest window.
_REMINDERS_SQL = text(
    """
INSERT INTO webhook_outbox (event_id, partner_id, type, created_at, data, dedupe_key)
SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), k.partner_id, CAST(:event_type AS text),
       CAST(:now AS timestamptz),
       jsonb_build_object(
           'member_id', l.member_id,
           'lot_id', 'lot_' || replace(l.lot_id::text, '-', ''),
           'issuer', l.issuer_id,
           'points', l.remaining,
           'expires_at', to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'days', CAST(:days AS integer)),
       CAST(:event_type AS text) || ':' || l.lot_id::text || ':' || CAST(:days AS integer)
           || ':' || k.partner_id
FROM lots AS l
JOIN members AS m ON m.member_id = l.member_id AND m.status = 'active'
JOIN member_links AS k ON k.member_id = l.member_id
WHERE l.remaining > 0 AND l.expires_at > CAST(:now AS timestamptz)
  AND l.expires_at <= CAST(:until AS timestamptz)
ORDER BY l.expires_at, l.lot_id, k.partner_id
ON CONFLICT (dedupe_key) DO NOTHING
"""
)


async def write_expiry_reminders(engine: AsyncEngine, now: datetime, days: Sequence[int]) -> int:
    """Write the reminders due at `now`; returns how many events were new."""
    written = 0
    async with engine.begin() as conn:
        for n in sorted(set(days), reverse=True):
            result = await conn.execute(
                _REMINDERS_SQL,
                {
                    "event_type": EVENT_TYPE,
                    "now": now,
                    "until": now + timedelta(days=n),
                    "days": n,
                },
            )
            written += result.rowcount or 0
    return written


def expiry_reminder_job(
    engine: AsyncEngine, days: Sequence[int]
) -> Callable[[datetime], Awaitable[int]]:
    """The scheduler's housekeeping job (settlement.schedule runs it every tick)."""

    async def write_expiry_reminders_job(now: datetime) -> int:
        return await write_expiry_reminders(engine, now, days)

    return write_expiry_reminders_job
