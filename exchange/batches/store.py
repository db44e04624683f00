"""All SQL of batches: storing a file, claiming a batch, recording item results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.batches.tables import batch_items, batches
from partners.webhooks import events

__all__ = [
    "ItemResult",
    "NewItem",
    "PendingItem",
    "claim_next_batch",
    "complete_batch",
    "get_batch",
    "insert_batch",
    "list_results",
    "live_counts",
    "pending_items",
    "record_results",
]


@dataclass(frozen=True, slots=True)
class ItemResult:
    seq: int
    item_id: str
    status: str  # posted | rejected
    transaction_id: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item still to post, with its item id's first result if it already has one
    (from any batch: then it is answered with that result and never posted)."""

    seq: int
    item_id: str
    payload: str  # the item as JSON text, decoded by the caller straight into its struct
    first: ItemResult | None


# A file's items as three arrays (position, item id, the item as JSON text): one statement
# per 2,000 items, where a multi-row `executemany` ran one statement per item (2.8 s of
# PostgreSQL's time for the bench's 50,000 items; docs/performance.md, "Seventh round").
_INSERT_ITEMS_SQL = text("""
INSERT INTO batch_items (batch_id, seq, item_id, payload, status)
SELECT :batch_id, i.seq, i.item_id, i.payload, 'pending'
FROM unnest(
    CAST(:seqs AS integer[]), CAST(:item_ids AS text[]), CAST(:payloads AS jsonb[])
) AS i(seq, item_id, payload)
""")
_ITEMS_PER_STATEMENT = 2000


@dataclass(frozen=True, slots=True)
class NewItem:
    seq: int  # 1-based position in the file
    item_id: str
    payload: str  # the item as JSON text


async def insert_batch(
    conn: AsyncConnection, batch: dict[str, Any], items: Sequence[NewItem]
) -> None:
    await conn.execute(batches.insert().values(**batch))
    for start in range(0, len(items), _ITEMS_PER_STATEMENT):  # one database transaction
        part = items[start : start + _ITEMS_PER_STATEMENT]
        await conn.execute(
            _INSERT_ITEMS_SQL,
            {
                "batch_id": batch["batch_id"],
                "seqs": [item.seq for item in part],
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


# The next pending items in file order, each with its item id's first result (one round
# trip). The payload comes as text: decoding it in one msgspec call is cheaper than the
# driver's JSON decoding followed by a conversion.
_PENDING_SQL = text("""
SELECT i.seq, i.item_id, i.payload::text AS payload,
       r.status AS first_status, r.transaction_id AS first_transaction_id, r.code AS first_code
FROM batch_items AS i
LEFT JOIN batch_item_results AS r ON r.partner_id = :partner_id AND r.item_id = i.item_id
WHERE i.batch_id = :batch_id AND i.status = 'pending'
ORDER BY i.seq
LIMIT :limit
""")


async def pending_items(
    conn: AsyncConnection, batch_id: str, partner_id: str, limit: int
) -> list[PendingItem]:
    rows = await conn.execute(
        _PENDING_SQL, {"batch_id": batch_id, "partner_id": partner_id, "limit": limit}
    )
    return [
        PendingItem(
            row.seq,
            row.item_id,
            row.payload,
            None
            if row.first_status is None
            else ItemResult(
                row.seq, row.item_id, row.first_status, row.first_transaction_id, row.first_code
            ),
        )
        for row in rows
    ]


# A chunk's results in one statement, as arrays: each item's result on the batch, and as
# its item id's first result unless it has one. The first results are inserted in item id
# order, so two processes recording the same ids wait for each other in one order.
_RECORD_SQL = text("""
WITH r AS (
    SELECT * FROM unnest(
        CAST(:seqs AS integer[]), CAST(:item_ids AS text[]), CAST(:statuses AS text[]),
        CAST(:transaction_ids AS text[]), CAST(:codes AS text[])
    ) AS r(seq, item_id, status, transaction_id, code)
),
firsts AS (
    INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id, code, batch_id)
    SELECT DISTINCT ON (r.item_id) :partner_id, r.item_id, r.status, r.transaction_id, r.code,
           :batch_id
    FROM r ORDER BY r.item_id, r.seq
    ON CONFLICT DO NOTHING
)
UPDATE batch_items AS b
SET status = r.status, transaction_id = r.transaction_id, code = r.code
FROM r WHERE b.batch_id = :batch_id AND b.seq = r.seq
""")


async def record_results(
    conn: AsyncConnection, batch_id: str, partner_id: str, results: Sequence[ItemResult]
) -> None:
    """Each item's result on the batch, and as the item id's first result unless it has one."""
    if not results:
        return
    await conn.execute(
        _RECORD_SQL,
        {
            "batch_id": batch_id,
            "partner_id": partner_id,
            "seqs": [r.seq for r in results],
            "item_ids": [r.item_id for r in results],
            "statuses": [r.status for r in results],
            "transaction_ids": [r.transaction_id for r in results],
            "codes": [r.code for r in results],
        },
    )


async def complete_batch(conn: AsyncConnection, batch: Row[Any], at: datetime) -> dict[str, Any]:
    """Mark the batch completed and write `batch.completed` in the same database
    transaction (contract §10: no fact without its event)."""
    counts: dict[str, int] = dict(
        (
            await conn.execute(
                select(batch_items.c.status, func.count())
                .where(batch_items.c.batch_id == batch.batch_id)
                .group_by(batch_items.c.status)
            )
        ).all()
    )
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


async def live_counts(conn: AsyncConnection, batch_id: str) -> dict[str, int]:
    rows = await conn.execute(
        select(batch_items.c.status, func.count())
        .where(batch_items.c.batch_id == batch_id)
        .group_by(batch_items.c.status)
    )
    return {status: int(count) for status, count in rows.all()}


async def list_results(
    conn: AsyncConnection, batch_id: str, after: int, limit: int
) -> list[Row[Any]]:
    query = (
        select(batch_items)
        .where(
            batch_items.c.batch_id == batch_id,
            batch_items.c.seq > after,
            batch_items.c.status != "pending",
        )
        .order_by(batch_items.c.seq)
        .limit(limit)
    )
    return [row for row in (await conn.execute(query)).all()]
