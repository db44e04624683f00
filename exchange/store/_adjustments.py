"""Adjustments' SQL: the request (beside its idempotency record) and the approval (in the
same database transaction as the posting it creates), on the store's one connection type."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exchange.store._connection import Connection
from exchange.tables import adjustments

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


async def member_exists(conn: Connection, member_id: str) -> bool:
    found = await conn.fetchval("SELECT 1 FROM members WHERE member_id = $1", member_id)
    return found is not None


async def adjustment_partner_status(conn: Connection, partner_id: str) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM partners WHERE partner_id = $1", partner_id
    )
    return status


_COLUMNS = tuple(AdjustmentRow.__dataclass_fields__)
_INSERT_SQL = (
    f"INSERT INTO {adjustments.name} ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMNS) + 1))})"
)


async def insert_adjustment(conn: Connection, row: AdjustmentRow) -> None:
    await conn.execute(_INSERT_SQL, *(getattr(row, name) for name in _COLUMNS))


async def fetch_adjustment(conn: Connection, adjustment_id: str) -> AdjustmentRow | None:
    row = await conn.fetchrow("SELECT * FROM adjustments WHERE adjustment_id = $1", adjustment_id)
    return _row(row) if row is not None else None


async def pending_adjustments(conn: Connection, limit: int) -> list[AdjustmentRow]:
    """Adjustments awaiting their second operator, oldest first (the soonest to expire)."""
    rows = await conn.fetch(
        "SELECT * FROM adjustments WHERE status = 'pending' "
        "ORDER BY requested_at, adjustment_id LIMIT $1",
        limit,
    )
    return [_row(row) for row in rows]


_LOCK_SQL = "SELECT * FROM adjustments WHERE adjustment_id = $1 FOR UPDATE"


async def lock_adjustment(conn: Connection, adjustment_id: str) -> AdjustmentRow | None:
    """The adjustment, locked until the end of the database transaction: two approvals
    racing each other post it once."""
    row = await conn.fetchrow(_LOCK_SQL, adjustment_id)
    return _row(row) if row is not None else None


async def mark_adjustment_expired(conn: Connection, adjustment_id: str) -> None:
    await conn.execute(
        "UPDATE adjustments SET status = 'expired' WHERE adjustment_id = $1 AND status = 'pending'",
        adjustment_id,
    )


async def mark_adjustment_posted(
    conn: Connection,
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
