"""Webhooks: signing keys sealed by a key-encryption key, and the fan-out cursor.

- `exchange_keys.kek_id`: the key-encryption key that sealed `private_key` (AES-256-GCM);
  NULL for the plaintext keys written before, which the exchange re-seals on its first
  start with a key-encryption key (a migration holds no secret to do it here).
- `webhook_outbox.tx_id`: the writing database transaction's id, set by a default, so
  the delivery worker walks new events by (tx_id, event_id) from a cursor instead of
  scanning the outbox; rows already there get this migration's id.
- `webhook_fanout`: that cursor, one row, starting before every event (its first walk
  meets the events already delivered and skips them by their delivery rows).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("exchange_keys", sa.Column("kek_id", sa.String(32), nullable=True))
    op.add_column(
        "webhook_outbox",
        sa.Column(
            "tx_id",
            sa.BigInteger(),
            nullable=False,
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
        ),
    )
    op.create_index("ix_webhook_outbox_tx_id_event_id", "webhook_outbox", ["tx_id", "event_id"])
    op.create_table(
        "webhook_fanout",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_fanout")),
    )
    op.execute("INSERT INTO webhook_fanout (id, tx_id, event_id) VALUES (1, 0, '')")


def downgrade() -> None:
    # Keys sealed by a key-encryption key cannot be opened by the older code: refuse
    # rather than hand it keys it would take for plaintext.
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM exchange_keys WHERE kek_id IS NOT NULL) THEN "
        "RAISE EXCEPTION 'exchange_keys holds sealed keys; delete them (then rotate) first'; "
        "END IF; END $$"
    )
    op.drop_column("exchange_keys", "kek_id")
    op.drop_table("webhook_fanout")
    op.drop_index("ix_webhook_outbox_tx_id_event_id", table_name="webhook_outbox")
    op.drop_column("webhook_outbox", "tx_id")
