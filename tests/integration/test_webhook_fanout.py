"""The delivery worker's fan-out (contract §10): from a cursor, so a cycle reads only new
outbox events; one process at a time; no event missed when transactions commit out of
the order they wrote in, none given two delivery rows when processes race."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine
from partners.webhooks import store
from partners.webhooks.service import WebhookService
from settlement.events import emit
from tests.support import add_partner

KEK = bytes(range(32))


class Rollback(Exception):
    """Raised inside a writer's transaction to roll it (and its event) back."""


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines: two server processes' pools on the same database."""
    first, second = (
        create_engine(database_url, pool_size=5),
        create_engine(database_url, pool_size=5),
    )
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


def _worker(engine: AsyncEngine, clock: FrozenClock, database_url: str) -> WebhookService:
    settings = Settings(database_url=database_url, webhook_key_secret=(KEK,))
    return WebhookService(engine, clock, settings)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan."""
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def _delivery_rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT event_id FROM webhook_deliveries"))).scalars())


async def test_an_event_committed_late_behind_a_newer_one_is_not_missed(
    engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    """A writes first (older transaction id) but commits last: a cursor that moved past
    B's event would skip A's for ever. The fan-out waits for A to end instead."""
    await add_partner(engine, clock, "grocer")
    worker = _worker(engine, clock, database_url)
    async with engine.connect() as slow:
        tx = await slow.begin()
        older = await emit(slow, "grocer", "key.revoked", {"key_id": "a"}, clock.now())
        async with engine.begin() as conn:
            newer = await emit(conn, "grocer", "key.revoked", {"key_id": "b"}, clock.now())
        await worker.fan_out()
        assert await _delivery_rows(engine) == []  # B waits for A's transaction to end
        async with engine.connect() as conn:
            assert await store.backlog(conn) == 1  # ... and is counted as waiting
        await tx.commit()
    await worker.fan_out()
    assert sorted(await _delivery_rows(engine)) == sorted([older, newer])
    await worker.fan_out()  # nothing new: nothing changes
    assert len(await _delivery_rows(engine)) == 2


async def test_a_cycle_reads_only_the_events_past_the_cursor(
    engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    await add_partner(engine, clock, "grocer")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_outbox (event_id, partner_id, type, created_at, data) "
                "SELECT 'evt_' || n, 'grocer', 'key.revoked', now(), '{}' "
                "FROM generate_series(1, 3000) AS n"
            )
        )
    worker = _worker(engine, clock, database_url)
    await worker.fan_out()
    assert len(await _delivery_rows(engine)) == 3000
    async with engine.begin() as conn:
        await emit(conn, "grocer", "key.revoked", {"key_id": "x"}, clock.now())
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE webhook_outbox"))  # autovacuum's job on a live one
    async with engine.connect() as conn:
        # The plan of the next cycle's statement, run and rolled back: the outbox is read
        # by an index range from the cursor, one row out of 3001.
        cursor = (await conn.execute(text("SELECT tx_id, event_id FROM webhook_fanout"))).one()
        plan = await conn.execute(
            text("EXPLAIN (ANALYZE, FORMAT JSON) " + store.FAN_OUT.text),
            {"tx_id": cursor.tx_id, "event_id": cursor.event_id, "limit": 500},
        )
        reads = _nodes(plan.scalar_one()[0]["Plan"])
        await conn.rollback()
    outbox = [n for n in reads if n.get("Relation Name") == "webhook_outbox"]
    index = [n for n in reads if n.get("Index Name") == "ix_webhook_outbox_tx_id_event_id"]
    assert index, outbox  # no sequential scan of the outbox
    assert [n["Actual Rows"] for n in outbox + index] == [1] * len(outbox + index), outbox
    await worker.fan_out()
    assert len(await _delivery_rows(engine)) == 3001


async def test_two_processes_fanning_out_and_delivering_at_once_lose_and_double_nothing(
    engines: tuple[AsyncEngine, AsyncEngine], clock: FrozenClock, database_url: str
) -> None:
    first, second = engines
    await add_partner(first, clock, "grocer")
    async with first.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_subscriptions (partner_id, url, events, updated_at) VALUES "
                "('grocer', 'https://partner.example/hook', '[\"key.revoked\"]', now())"
            )
        )
    workers = [_worker(first, clock, database_url), _worker(second, clock, database_url)]
    committed: list[str] = []
    writing = True
    rng = random.Random(14)

    async def write(n: int) -> None:
        # Writers overlap, commit out of order, and some roll back.
        try:
            async with (first if n % 2 else second).begin() as conn:
                event_id = await emit(
                    conn, "grocer", "key.revoked", {"key_id": str(n)}, clock.now()
                )
                await asyncio.sleep(rng.random() * 0.2)
                if n % 7 == 0:
                    raise Rollback
            committed.append(event_id)
        except Rollback:
            pass

    received: list[str] = []

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content)["event_id"])
        return httpx.Response(200)

    async def deliver(worker: WebhookService) -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as http:
            while writing:
                await worker.deliver_due(http)
            for _ in range(20):  # the last writers' events, once their transactions ended
                await worker.deliver_due(http)

    delivering = [asyncio.create_task(deliver(worker)) for worker in workers]
    for wave in range(4):
        await asyncio.gather(*(write(wave * 20 + n) for n in range(20)))
    writing = False
    await asyncio.gather(*delivering)

    assert len(committed) == 80 - len([n for n in range(80) if n % 7 == 0])
    rows = await _delivery_rows(first)
    assert sorted(rows) == sorted(committed)  # every committed event once, no rolled-back one
    assert sorted(received) == sorted(committed)  # each delivered exactly once
