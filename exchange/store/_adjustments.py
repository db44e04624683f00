"""Adjustments' SQL: the request (SQLAlchemy Core, beside its idempotency record) and the
approval (asyncpg, in the same database transaction as the posting it creates)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.tables import adjustments, members
from partners.tables import partners

__all__ = [
    "AdjustmentRow",
    "adjustment_partner_status",
    "fetch_adjustment",
    "insert_adjustment",
    "lock_adjustment",
    "mark_adjustment_expired",
    "mark_adjustment_posted",
    "member_exists",
    "pending_adjustments",
]


@dataclass(frozen=True, slots=True)
class AdjustmentRow:
    adjustment_id: str
    member_id: str
    issuer_id: str
    points: int
    reason: str
    status: str
    requested_by: str
    requested_token_id: str
    requested_at: datetime
    expires_at: datetime
    approved_by: str | None
    approved_token_id: str | None
    approved_at: datetime | None
    posting_id: uuid.UUID | None


def _row(row: Any) -> AdjustmentRow:
    return AdjustmentRow(**{name: row[name] for name in AdjustmentRow.__dataclass_fields__})


async def member_exists(conn: AsyncConnection, member_id: str) -> bool:
    found = await conn.scalar(select(members.c.member_id).where(members.c.member_id == member_id))
    return found is not None


async def adjustment_partner_status(conn: AsyncConnection, partner_id: str) -> str | None:
    status: str | None = await conn.scalar(
        select(partners.c.status).where(partners.c.partner_id == partner_id)
    )
    return status


async def insert_adjustment(conn: AsyncConnection, row: AdjustmentRow) -> None:
    values = {name: getattr(row, name) for name in AdjustmentRow.__dataclass_fields__}
    await conn.execute(insert(adjustments).values(values))


async def fetch_adjustment(conn: AsyncConnection, adjustment_id: str) -> AdjustmentRow | None:
    row = (
        await conn.execute(select(adjustments).where(adjustments.c.adjustment_id == adjustment_id))
    ).first()
    return _row(row._mapping) if row is not None else None


async def pending_adjustments(conn: AsyncConnection, limit: int) -> list[AdjustmentRow]:
    """Adjustments awaiting their second operator, oldest first (the soonest to expire)."""
    rows = await conn.execute(
        select(adjustments)
        .where(adjustments.c.status == "pending")
        .order_by(adjustments.c.requested_at, adjustments.c.adjustment_id)
        .limit(limit)
    )
    return [_row(row._mapping) for row in rows]


_LOCK_SQL = "SELECT * FROM adjustments WHERE adjustment_id = $1 FOR UPDATE"


async def lock_adjustment(conn: asyncpg.Connection, adjustment_id: str) -> AdjustmentRow | None:
    """The adjustment, locked until the end of the database transaction: two approvals
    racing each other post it once."""
    row = await conn.fetchrow(_LOCK_SQL, adjustment_id)
    return _row(row) if row is not None else None


async def mark_adjustment_expired(conn: asyncpg.Connection, adjustment_id: str) -> None:
    await conn.execute(
        "UPDATE adjustments SET status = 'expired' WHERE adjustment_id = $1 AND status = 'pending'",
        adjustment_id,
    )


async def mark_adjustment_posted(
    conn: asyncpg.Connection,
    adjustment_id: str,
    *,
    approved_by: str,
    approved_token_id: str,
    approved_at: datetime,
    posting_id: uuid.UUID,
) -> AdjustmentRow:
    row = await conn.fetchrow(
        "UPDATE adjustments SET status = 'posted', approved_by = $2, approved_token_id = $3, "
        "approved_at = $4, posting_id = $5 WHERE adjustment_id = $1 RETURNING *",
        adjustment_id,
        approved_by,
        approved_token_id,
        approved_at,
        posting_id,
    )
    return _row(row)
