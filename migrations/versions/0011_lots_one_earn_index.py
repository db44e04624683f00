"""One index on `lots.earn_id` instead of two (issue 16: keep only the indexes a query uses).

`uq_lots_earn_id` (unique, where `source_lot_id IS NULL`: one lot per earn) and
`ix_lots_earn_id` (every lot by the posting that created it: a reversal's originals,
`exchange verify`, the liability roll-forward) become one unique index on
`(earn_id, source_lot_id)` with NULLS NOT DISTINCT. An earn's lot (source NULL) is still
the only one of its earn; a transfer_in's lots, one per source lot, were already unique by
construction (an allocation is unique per posting, lot and kind); and every query by
`earn_id` still finds its leading column. Every lot inserted updates one index fewer.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "uq_lots_earn_id_source_lot_id",
        "lots",
        ["earn_id", "source_lot_id"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.drop_index("ix_lots_earn_id", table_name="lots")
    op.drop_index("uq_lots_earn_id", table_name="lots")


def downgrade() -> None:
    op.create_index(
        "uq_lots_earn_id",
        "lots",
        ["earn_id"],
        unique=True,
        postgresql_where=sa.text("source_lot_id IS NULL"),
    )
    op.create_index("ix_lots_earn_id", "lots", ["earn_id"])
    op.drop_index("uq_lots_earn_id_source_lot_id", table_name="lots")
