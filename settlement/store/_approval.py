"""Approval rows: one per approved run, its primary key the run (contract §8).

Two concurrent approvals of one run converge on that key: the second insert waits for
the first to commit, then does nothing, and the caller reads the first approval.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.approval import Approval
from settlement.tables import settlement_approvals

__all__ = ["insert_approval", "load_approval", "load_approvals"]


async def insert_approval(
    conn: AsyncConnection, run_id: str, approved_by: str, approved_at: datetime
) -> bool:
    """True if this call approved the run; False if it already was (nothing written)."""
    inserted = await conn.execute(
        insert(settlement_approvals)
        .values(run_id=run_id, approved_by=approved_by, approved_at=approved_at)
        .on_conflict_do_nothing(index_elements=["run_id"])
        .returning(settlement_approvals.c.run_id)
    )
    return inserted.first() is not None


async def load_approval(conn: AsyncConnection, run_id: str) -> Approval | None:
    approvals = await load_approvals(conn, [run_id])
    return approvals.get(run_id)


async def load_approvals(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, Approval]:
    if not run_ids:
        return {}
    rows = await conn.execute(
        select(settlement_approvals).where(settlement_approvals.c.run_id.in_(list(run_ids)))
    )
    return {row.run_id: Approval(row.run_id, row.approved_by, row.approved_at) for row in rows}
