"""The webhook backlog that the console and /metrics show: events written to the outbox and
not yet delivered, whether the worker has picked them up or not."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from partners.webhooks import store
from tests.support import add_partner


async def _backlog(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await store.backlog(conn)


async def test_the_backlog_counts_unpicked_and_pending_events_only(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    assert await _backlog(engine) == 0
    async with engine.begin() as conn:
        for number in range(3):
            await conn.execute(
                text(
                    "INSERT INTO webhook_outbox (event_id, partner_id, type, created_at, data) "
                    "VALUES (:e, 'grocer', 'key.revoked', :at, '{}')"
                ),
                {"e": f"evt_{number}", "at": clock.now() + timedelta(seconds=number)},
            )
    assert await _backlog(engine) == 3  # written, not picked up yet

    async with engine.begin() as conn:
        assert await store.fan_out(conn, 100)
    assert await _backlog(engine) == 3  # picked up: pending deliveries

    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook_deliveries SET status = 'delivered' WHERE event_id = 'evt_0'")
        )
        await conn.execute(
            text("UPDATE webhook_deliveries SET status = 'failed' WHERE event_id = 'evt_1'")
        )
    assert await _backlog(engine) == 1  # delivered and given-up events are not a backlog
