"""All SQL of batches: storing a file, claiming a batch, recording item results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.batches.tables import batch_item_results, batch_items, batches
from partners.webhooks import events

__all__ = [
    "ItemResult",
    "claim_next_batch",
    "complete_batch",
    "first_results",
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


async def insert_batch(
    conn: AsyncConnection, batch: dict[str, Any], items: Sequence[dict[str, Any]]
) -> None:
    await conn.execute(batches.insert().values(**batch))
    for start in range(0, len(items), 2000):  # bounded statements; one database transaction
        await conn.execute(batch_items.insert(), list(items[start : start + 2000]))


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


async def pending_items(conn: AsyncConnection, batch_id: str, limit: int) -> list[Any]:
    query = (
        select(batch_items.c.seq, batch_items.c.item_id, batch_items.c.payload)
        .where(batch_items.c.batch_id == batch_id, batch_items.c.status == "pending")
        .order_by(batch_items.c.seq)
        .limit(limit)
    )
    return [row for row in (await conn.execute(query)).all()]


async def first_results(
    conn: AsyncConnection, partner_id: str, item_ids: Sequence[str]
) -> dict[str, Row[Any]]:
    """The results the partner's item ids already have, from any batch."""
    if not item_ids:
        return {}
    query = select(batch_item_results).where(
        batch_item_results.c.partner_id == partner_id,
        batch_item_results.c.item_id.in_(sorted(set(item_ids))),
    )
    return {row.item_id: row for row in (await conn.execute(query)).all()}


async def record_results(
    conn: AsyncConnection, batch_id: str, partner_id: str, results: Sequence[ItemResult]
) -> None:
    """Each item's result on the batch, and as the item id's first result unless it has one."""
    if not results:
        return
    await conn.execute(
        insert(batch_item_results)
        .values(
            [
                {
                    "partner_id": partner_id,
                    "item_id": r.item_id,
                    "status": r.status,
                    "transaction_id": r.transaction_id,
                    "code": r.code,
                    "batch_id": batch_id,
                }
                for r in {r.item_id: r for r in results}.values()
            ]
        )
        .on_conflict_do_nothing()
    )
    # One executemany round trip for the chunk, not one statement per item.
    await conn.execute(
        update(batch_items)
        .where(batch_items.c.batch_id == batch_id, batch_items.c.seq == bindparam("b_seq"))
        .values(
            status=bindparam("b_status"),
            transaction_id=bindparam("b_transaction_id"),
            code=bindparam("b_code"),
        ),
        [
            {
                "b_seq": r.seq,
                "b_status": r.status,
                "b_transaction_id": r.transaction_id,
                "b_code": r.code,
            }
            for r in results
        ],
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
