"""A batch's reads cost what the batch holds, not what its partner has ever sent.

Reading a chunk's pending items, counting a batch's results and paging through them each
look up the batch's items' results. Written as joins, PostgreSQL was free to hash every
result the partner ever had, and did when the statistics were taken while the tables were
empty (a new exchange; every bench run): the pending read then cost 29 ms a chunk in the
batch harness and grew with the partner's history (docs/performance.md, "Seventeenth
round"). Each read now probes each item's result by primary key, whatever the statistics.
These tests reproduce the empty statistics and read the plans PostgreSQL makes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches import store
from exchange.batches.tables import batch_items
from exchange.clock import FrozenClock
from tests.support import add_partner

ITEMS = 300
HISTORY = 5000  # results of the partner's earlier batches


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _plan(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        found = (await conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params)).scalar_one()
    document = json.loads(found) if isinstance(found, str) else found
    return list(_nodes(document[0]["Plan"]))


def _literal(engine: AsyncEngine, query: Select[Any]) -> str:
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def _reads_of_results(nodes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(node type, index condition) of each node reading `batch_item_results`."""
    return [
        (node["Node Type"], node.get("Index Cond", ""))
        for node in nodes
        if node.get("Relation Name") == "batch_item_results"
    ]


async def _partner_with_history(engine: AsyncEngine, clock: FrozenClock) -> None:
    await add_partner(engine, clock)
    async with engine.begin() as conn:
        # The statistics of a new exchange: taken while the batch tables were empty.
        await conn.execute(text("ANALYZE batches, batch_items, batch_item_results"))
        await conn.execute(
            text(
                "INSERT INTO batches (batch_id, partner_id, status, items, posted, rejected,"
                " created_at, key_id, signature_input, signature, signature_base)"
                " VALUES ('bat_1', 'grocer', 'processing', :items, 0, 0, now(), 'k', 'i', 's',"
                " 'b')"
            ),
            {"items": ITEMS},
        )
        await conn.execute(
            text(
                "INSERT INTO batch_items (batch_id, seq, item_id, payload)"
                " SELECT 'bat_1', n, 'now-' || n, '{}' FROM generate_series(1, :items) AS n"
            ),
            {"items": ITEMS},
        )
        # The partner's history, and the first half of this batch decided.
        await conn.execute(
            text(
                "INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id,"
                " batch_id) SELECT 'grocer', 'old-' || n, 'posted', 'txn_' || n, 'bat_1'"
                " FROM generate_series(1, :history) AS n"
                " UNION ALL SELECT 'grocer', 'now-' || n, 'rejected', NULL, 'bat_1'"
                " FROM generate_series(1, :half) AS n"
            ),
            {"history": HISTORY, "half": ITEMS // 2},
        )


async def test_each_read_probes_its_items_results_by_key_whatever_the_statistics(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await _partner_with_history(engine, clock)
    decided = store.decided_items("bat_1", "grocer")
    counted = decided.subquery()
    reads = {
        "pending": await _plan(
            engine,
            store.PENDING_SQL.text,
            {"batch_id": "bat_1", "partner_id": "grocer", "after": 0, "limit": 250},
        ),
        "counts": await _plan(
            engine,
            _literal(engine, select(counted.c.status, func.count()).group_by(counted.c.status)),
            {},
        ),
        "results page": await _plan(
            engine,
            _literal(engine, decided.where(batch_items.c.seq > 0).order_by("seq").limit(100)),
            {},
        ),
    }
    for name, nodes in reads.items():
        found = _reads_of_results(nodes)
        assert found, (name, nodes)
        for node_type, condition in found:
            assert node_type in ("Index Scan", "Index Only Scan"), (name, found)
            assert "item_id" in condition, (name, found)
        assert not any("Hash" in node["Node Type"] for node in nodes), name


async def test_the_reads_answer_as_before(engine: AsyncEngine, clock: FrozenClock) -> None:
    # The control: the probing shapes give the answers the joins gave.
    await _partner_with_history(engine, clock)
    async with engine.connect() as conn:
        counts = await store.live_counts(conn, "bat_1", "grocer")
        page = await store.list_results(conn, "bat_1", "grocer", 147, 5)
        pending = await store.pending_items(conn, "bat_1", "grocer", 0, 3)
    assert counts == {"rejected": ITEMS // 2}
    # decided items only, in file order, from after the position given
    assert [(row.seq, row.item_id, row.status) for row in page] == [
        (seq, f"now-{seq}", "rejected") for seq in (148, 149, 150)
    ]
    # the first undecided items: after the decided half
    assert [(item.seq, item.item_id) for item in pending] == [
        (seq, f"now-{seq}") for seq in range(ITEMS // 2 + 1, ITEMS // 2 + 4)
    ]
