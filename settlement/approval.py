"""Run approval (contract §8): a computed run becomes approved and issues its documents.

In ONE database transaction: the approval row, one numbered document per line with
net != 0, one `statement.ready` event per document, and the audit line. A run that does
not reconcile is refused. Approving again returns the first approval unchanged; two
concurrent approvals of one run converge on the primary key of `settlement_approvals`
(the second waits for the first to commit, then finds its row and issues nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.errors import RunUnreconciled
from settlement.store import RunHeader
from settlement.tables import settlement_approvals

__all__ = [
    "Approval",
    "check_approvable",
    "insert_approval",
    "load_approval",
    "load_approvals",
]


@dataclass(frozen=True, slots=True)
class Approval:
    run_id: str
    approved_by: str
    approved_at: datetime


def check_approvable(header: RunHeader) -> None:
    """Only a reconciled run may be approved: its figures are what documents will bill."""
    if not header.reconciled:
        raise RunUnreconciled(
            f"Run {header.run_id} does not reconcile (failed checks: "
            f"{', '.join(header.checks.failed())}); it cannot be approved."
        )


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
