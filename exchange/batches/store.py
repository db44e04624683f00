"""All SQL of batches: storing a file, claiming a batch, recording item results."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Row, Select, and_, func, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.batches.tables import batch_item_results, batch_items, batches
from exchange.store import Connection, driver_of
from partners.webhooks import events

__all__ = [
    "PENDING_SQL",
    "ItemResult",
    "NewItem",
    "PendingItem",
    "claim_next_batch",
    "complete_batch",
    "decided_items",
    "get_batch",
    "insert_batch",
    "list_results",
    "live_counts",
    "pending_items",
    "record_results",
]


class ItemResult(msgspec.Struct, frozen=True):
    """An item id's first result."""

    item_id: str
    status: str  # posted | rejected
    transaction_id: str | None = None
    code: str | None = None


class PendingItem(msgspec.Struct, frozen=True):
    """An item whose item id has no result yet."""

    seq: int
    item_id: str
    payload: str  # the item as JSON text, decoded by the caller straight into its struct


# A file's items as two arrays (item id, the item as JSON text), numbered from the part's
# first position: one statement per 2,000 items, where a multi-row `executemany` ran one
# statement per item (2.8 s of PostgreSQL's time for the bench's 50,000 items;
# docs/performance.md, "Seventh round"). Only `text[]` parameters: asyncpg encodes them
# with codecs of its own, where an `integer[]` made it look the type up in the catalog
# once per connection, a query PostgreSQL took ~8 ms to plan (docs/performance.md,
# "Eighteenth round").
_INSERT_ITEMS_SQL = text("""
INSERT INTO batch_items (batch_id, seq, item_id, payload)
SELECT :batch_id, :first_seq + i.n - 1, i.item_id, i.payload
FROM unnest(CAST(:item_ids AS text[]), CAST(:payloads AS text[]))
     WITH ORDINALITY AS i(item_id, payload, n)
""")
_ITEMS_PER_STATEMENT = 2000


class NewItem(msgspec.Struct, frozen=True):
    seq: int  # 1-based position in the file
    item_id: str
    payload: str  # the item as JSON text


async def insert_batch(
    conn: AsyncConnection, batch: dict[str, Any], items: Sequence[NewItem]
) -> None:
    """The batch's row and its items, which are numbered 1, 2, ... in the file's order."""
    await conn.execute(batches.insert().values(**batch))
    for start in range(0, len(items), _ITEMS_PER_STATEMENT):  # one database transaction
        part = items[start : start + _ITEMS_PER_STATEMENT]
        await conn.execute(
            _INSERT_ITEMS_SQL,
            {
                "batch_id": batch["batch_id"],
                "first_seq": part[0].seq,
                "item_ids": [item.item_id for item in part],
                "payloads": [item.payload for item in part],
            },
        )


async def claim_next_batch(conn: AsyncConnection) -> Row[Any] | None:
    """The oldest unfinished batch no other process is working on, locked until the
    database transaction ends: exactly one owner per batch across server processes."""
    query = (
        select(batches)
        .where(batches.c.status == "processing")
        .order_by(batches.c.created_at, batches.c.batch_id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return (await conn.execute(query)).first()


# The next undecided items after position `after`, in file order. An item's result is its
# item id's first result (contract §9: an item id is decided once, for ever), so an item is
# pending exactly while `batch_item_results` has no row for its id, and an item's row is
# never updated. The result is looked for with a scalar subquery, which PostgreSQL never
# turns into a join: one primary-key probe per item read. As `NOT EXISTS`, statistics
# taken while the tables were empty (a new exchange, every bench run) made it a hash anti
# join over every result the partner ever had, once per chunk: 29 ms a call in the batch
# harness, more than the ledger's write (docs/performance.md, "Seventeenth round").
PENDING_SQL = text("""
SELECT i.seq, i.item_id, i.payload
FROM batch_items AS i
WHERE i.batch_id = :batch_id AND i.seq > :after
  AND (SELECT 1 FROM batch_item_results AS r
       WHERE r.partner_id = :partner_id AND r.item_id = i.item_id) IS NULL
ORDER BY i.seq
LIMIT :limit
""")


async def pending_items(
    conn: AsyncConnection, batch_id: str, partner_id: str, after: int, limit: int
) -> list[PendingItem]:
    """Up to `limit` undecided items after position `after`, in file order."""
    rows = await conn.execute(
        PENDING_SQL,
        {"batch_id": batch_id, "partner_id": partner_id, "after": after, "limit": limit},
    )
    # The SELECT's columns are the struct's fields in order: unpacking a row costs a tenth
    # of reading its three attributes by name (2.3 us an item).
    return [PendingItem(*row) for row in rows]


# A chunk's results in one statement, as one JSON parameter (encoded by msgspec in C; four
# arrays cost the driver's per-value codecs 6.2 us of CPU per result against 4.1 us): each
# item id's first result. The rows are inserted in item id order, so two processes
# recording the same ids wait for each other in one order; an id another batch decided
# meanwhile keeps its first result (the insert waits for that batch's transaction to end,
# then inserts nothing), and the count of rows inserted says so.
_RECORD_SQL = """
WITH recorded AS (
    INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id, code, batch_id)
    SELECT $1, r.item_id, r.status, r.transaction_id, r.code, $2
    FROM jsonb_to_recordset($3::jsonb)
        AS r(item_id text, status text, transaction_id text, code text)
    ORDER BY r.item_id
    ON CONFLICT DO NOTHING
    RETURNING 1)
SELECT count(*) FROM recorded
"""


async def record_results(
    conn: AsyncConnection | Connection,
    batch_id: str,
    partner_id: str,
    results: Sequence[ItemResult],
) -> bool:
    """Each decided item id's first result, in `conn`'s database transaction. False when
    an id among them was decided already (it keeps its own): a caller recording items it
    has just posted must then roll back, or that item would be posted twice."""
    if not results:
        return True
    driver = await driver_of(conn)
    recorded = await driver.fetchval(
        _RECORD_SQL, partner_id, batch_id, msgspec.json.encode(results).decode()
    )
    return bool(recorded == len(results))


def decided_items(batch_id: str, partner_id: str) -> Select[Any]:
    """The batch's decided items with their results (an item id's first result), in no
    order. Each item's result is looked up by its own (partner, item id) primary-key probe:
    a LATERAL subquery with a LIMIT is never flattened into a join, so the cost is one
    probe per item of this batch whatever the partner's history. As a plain join,
    PostgreSQL hashed every result the partner ever had (7,000 rows for a batch of 1,000
    in the batch harness; docs/performance.md, "Seventeenth round")."""
    result = (
        select(batch_item_results.c.status, batch_item_results.c.transaction_id,
               batch_item_results.c.code)
        .where(
            batch_item_results.c.partner_id == partner_id,
            batch_item_results.c.item_id == batch_items.c.item_id,
        )
        .limit(1)
        .lateral("result")
    )  # fmt: skip
    return (
        select(batch_items.c.seq, batch_items.c.item_id, result.c.status,
               result.c.transaction_id, result.c.code)
        .select_from(batch_items.join(result, true()))
        .where(batch_items.c.batch_id == batch_id)
    )  # fmt: skip


async def live_counts(conn: AsyncConnection, batch_id: str, partner_id: str) -> dict[str, int]:
    """How many of the batch's items are posted and rejected so far."""
    decided = decided_items(batch_id, partner_id).subquery()
    rows = await conn.execute(select(decided.c.status, func.count()).group_by(decided.c.status))
    return {status: int(count) for status, count in rows.all()}


async def complete_batch(conn: AsyncConnection, batch: Row[Any], at: datetime) -> dict[str, Any]:
    """Mark the batch completed and write `batch.completed` in the same database
    transaction (contract §10: no fact without its event)."""
    counts = await live_counts(conn, batch.batch_id, batch.partner_id)
    posted, rejected = int(counts.get("posted", 0)), int(counts.get("rejected", 0))
    await conn.execute(
        update(batches)
        .where(batches.c.batch_id == batch.batch_id)
        .values(status="completed", posted=posted, rejected=rejected, completed_at=at)
    )
    data = {
        "batch_id": batch.batch_id,
        "items": batch.items,
        "posted": posted,
        "rejected": rejected,
    }
    await events.batch_completed(conn, batch.partner_id, data, at)
    return data


async def get_batch(conn: AsyncConnection, partner_id: str, batch_id: str) -> Row[Any] | None:
    query = select(batches).where(
        and_(batches.c.batch_id == batch_id, batches.c.partner_id == partner_id)
    )
    return (await conn.execute(query)).first()


async def list_results(
    conn: AsyncConnection, batch_id: str, partner_id: str, after: int, limit: int
) -> list[Row[Any]]:
    """The batch's decided items after position `after`, in file order."""
    query = (
        decided_items(batch_id, partner_id)
        .where(batch_items.c.seq > after)
        .order_by(batch_items.c.seq)
        .limit(limit)
    )
    return [row for row in (await conn.execute(query)).all()]
