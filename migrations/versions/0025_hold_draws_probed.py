"""`ledger_books` finds its holds' draws by each hold's posting, never by scanning draws.

A whole book (`due_by` NULL: burns, holds, captures, voids, reversals, transfers) also
loads the lots its member's open holds drew from. 0021 wrote that branch as a join of
`book_holds` (a CTE) with `allocations` on the hold's posting. In the generic plan the
posting path forces, PostgreSQL may put `allocations` outside: an index-only scan of
`pk_allocations` on its third column (`kind = 'draw'`) alone, which reads every draw in
the table, and then the (usually empty) `book_holds` for each. The estimate that chooses
it is one row; the cost is every burn ever posted. In a 6 s `exchange bench` run of hot
members' burns, each full book read 4,000-10,000 draws this way, and the burns cost
PostgreSQL 0.42 ms each against 0.25 for an earn (docs/performance.md, "Twenty-fifth
round"). In production the cost grows with the journal, for every member.

The listing of each open hold's draws (`holds`) had the same shape in a correlated
subquery, and read every draw once per hold.

Both now read each hold's draws in a subquery fenced with `OFFSET 0` (a `LATERAL` one for
the lots), so PostgreSQL cannot pull it up into the join and reorder it: for each hold,
one primary-key range read (`posting_id`, the key's first column) of that hold's
allocations. The function's result is unchanged; only how it finds the same rows.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_SIGNATURE = "ledger_books(text[], uuid[], uuid[], timestamptz)"
# (as 0021 wrote it, as it is now): the lots the holds drew from, and each hold's draws.
_CHANGES = (
    (
        """FROM book_holds AS h
                  JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
                  JOIN lots AS l ON l.lot_id = a.lot_id""",
        """FROM book_holds AS h
                  CROSS JOIN LATERAL (
                      SELECT d.lot_id FROM allocations AS d
                      WHERE d.posting_id = h.hold_posting_id AND d.kind = 'draw'
                      OFFSET 0) AS a
                  JOIN lots AS l ON l.lot_id = a.lot_id""",
    ),
    (
        """FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
                    WHERE a.posting_id = h.hold_posting_id AND a.kind = 'draw')""",
        """FROM (SELECT d.lot_id, d.points FROM allocations AS d
                          WHERE d.posting_id = h.hold_posting_id AND d.kind = 'draw'
                          OFFSET 0) AS a
                    JOIN lots AS l ON l.lot_id = a.lot_id)""",
    ),
)


def _replace(changes: tuple[tuple[str, str], ...]) -> None:
    """Recreate the function with each `old` replaced by its `new` (each found exactly once)."""
    conn = op.get_bind()
    definition: str = conn.execute(
        text(f"SELECT pg_get_functiondef('{_SIGNATURE}'::regprocedure)")
    ).scalar_one()
    for old, new in changes:
        if definition.count(old) != 1:
            raise RuntimeError(f"{_SIGNATURE}: a text to replace is not found exactly once")
        definition = definition.replace(old, new)
    op.execute(definition)  # CREATE OR REPLACE FUNCTION ...


def upgrade() -> None:
    _replace(_CHANGES)


def downgrade() -> None:
    _replace(tuple((new, old) for old, new in _CHANGES))
