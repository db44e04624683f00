"""A batch item's result is its item id's first result; the item's row is never updated.

An item id is decided once, for ever (contract §9), and `batch_item_results` keeps that
first result. Each item's row in `batch_items` also kept a copy (status, transaction id,
code), written by an UPDATE of every item as its chunk was recorded: a second row version
and index entry per posting, for a fact the first result already holds. The copy goes;
reads of a batch's results join its items to their ids' first results, and an item is
pending exactly while its id has none.

Every decided item's id has its first result already: the old recording inserted it in
the same statement that updated the item. So dropping the copy loses nothing, and the
downgrade recomputes it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_COPIED = ("status", "transaction_id", "code")


def upgrade() -> None:
    for column in _COPIED:
        op.drop_column("batch_items", column)


def downgrade() -> None:
    op.add_column("batch_items", sa.Column("status", sa.String(16), nullable=True))
    op.add_column("batch_items", sa.Column("transaction_id", sa.String(64), nullable=True))
    op.add_column("batch_items", sa.Column("code", sa.String(64), nullable=True))
    op.execute("""
        UPDATE batch_items AS i
        SET status = coalesce(d.status, 'pending'), transaction_id = d.transaction_id,
            code = d.code
        FROM (
            SELECT x.batch_id, x.seq, r.status, r.transaction_id, r.code
            FROM batch_items AS x
            JOIN batches AS b ON b.batch_id = x.batch_id
            LEFT JOIN batch_item_results AS r
                ON r.partner_id = b.partner_id AND r.item_id = x.item_id
        ) AS d
        WHERE d.batch_id = i.batch_id AND d.seq = i.seq
    """)
    op.alter_column("batch_items", "status", nullable=False)
