"""What a new database connection costs before it does its work.

Every connection is new once: after a restart, after a failover, and every hour, when the
pool recycles it. Two costs came with each (docs/performance.md, "Eighteenth round"):
asyncpg looked up in the catalog each array type it has no codec of its own for (an
`integer[]` of an upload's positions, a `timestamptz[]` of nonces' times), a query
PostgreSQL took ~8 ms to plan; and PostgreSQL planned each ledger statement five times
for the parameters at hand before settling on the generic plan it keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg.connection
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.batches import store as batch_store
from exchange.batches.tables import batch_items
from exchange.clock import FrozenClock
from exchange.db import create_engine, driver_connection
from partners import store as partner_store
from tests.support import add_partner


@pytest.fixture
def type_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the types asyncpg looks up in the catalog, as it looks them up."""
    looked_up: list[str] = []
    original = asyncpg.connection.Connection._introspect_types

    async def recorded(self: Any, *arguments: Any) -> Any:
        found = await original(self, *arguments)
        looked_up.extend(row["name"] for row in found[0])
        return found

    monkeypatch.setattr(asyncpg.connection.Connection, "_introspect_types", recorded)
    return looked_up


async def test_an_upload_and_nonces_need_no_type_lookup(
    database_url: str, clock: FrozenClock, type_lookups: list[str]
) -> None:
    fresh = create_engine(database_url, pool_size=2)
    try:
        await add_partner(fresh, clock)
        items = [batch_store.NewItem(seq, f"i-{seq}", "{}") for seq in range(1, 4)]
        async with fresh.begin() as conn:
            await batch_store.insert_batch(conn, _batch_row("bat_fresh"), items)
        now = datetime.now(UTC)
        await partner_store.insert_nonces(fresh, [("k", "n-1")], [now], durable=True)
        await partner_store.insert_nonces(fresh, [("k", "n-2")], [now], durable=False)
        async with driver_connection(fresh) as conn, store.transaction(conn):
            await store.claim_nonces(conn, [("k", "n-3", now)])
    finally:
        await fresh.dispose()
    assert type_lookups == []


async def test_nonces_keep_their_own_times(engine: AsyncEngine) -> None:
    first = datetime(2026, 3, 29, 0, 59, 59, 123456, tzinfo=UTC)
    second = first + timedelta(hours=1, microseconds=1)
    new = await partner_store.insert_nonces(
        engine, [("k", "n-1"), ("k", "n-2")], [first, second], durable=True
    )
    async with driver_connection(engine) as conn, store.transaction(conn):
        claimed = await store.claim_nonces(conn, [("k", "n-3", second)])
        seen = await conn.fetch("SELECT nonce, seen_at FROM signature_nonces ORDER BY nonce")
    assert new == {("k", "n-1"), ("k", "n-2")}
    assert claimed == {("k", "n-3")}
    assert [(row["nonce"], row["seen_at"]) for row in seen] == [
        ("n-1", first),
        ("n-2", second),
        ("n-3", second),
    ]


async def test_a_large_uploads_items_keep_their_positions(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """Items are stored 2,000 to a statement: each part is numbered on from the last."""
    await add_partner(engine, clock)
    count = 4_321
    items = [batch_store.NewItem(seq, f"i-{seq}", f'{{"n":{seq}}}') for seq in range(1, count + 1)]
    async with engine.begin() as conn:
        await batch_store.insert_batch(conn, _batch_row("bat_large"), items)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(batch_items.c.seq, batch_items.c.item_id, batch_items.c.payload)
                .where(batch_items.c.batch_id == "bat_large")
                .order_by(batch_items.c.seq)
            )
        ).all()
    assert [(row.seq, row.item_id, row.payload) for row in rows] == [
        (item.seq, item.item_id, item.payload) for item in items
    ]


async def test_a_ledger_transaction_plans_generically_and_only_itself(
    engine: AsyncEngine,
) -> None:
    async with driver_connection(engine) as conn:
        async with store.transaction(conn):
            inside = await conn.fetchval("SHOW plan_cache_mode")
            scans = await conn.fetchval("SHOW enable_seqscan")
        after = await conn.fetchval("SHOW plan_cache_mode")
    assert (inside, scans) == ("force_generic_plan", "off")
    assert after == "auto"


def _batch_row(batch_id: str) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "partner_id": "grocer",
        "status": "processing",
        "items": 0,
        "posted": 0,
        "rejected": 0,
        "created_at": datetime.now(UTC),
        "key_id": "key-1",
        "signature_input": 'sig1=("@method")',
        "signature": ":c2ln:",
        "content_digest": None,
        "signature_base": b"base",
    }
