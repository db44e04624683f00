"""A batch item's payload is stored as text, not jsonb.

The payload is the item as the exchange itself encoded it (`exchange.batches.parse.
encode_item`), read back whole by `decode_item`; nothing ever queries inside it. As jsonb,
PostgreSQL parsed every item into its binary form when the file was stored and printed it
back to text when the item was posted: about 6 us and 2.5 us an item, of a batch posting's
0.15-0.2 ms of PostgreSQL CPU (docs/performance.md, "Thirteenth round"). The text is the
same JSON.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE batch_items ALTER COLUMN payload TYPE text USING payload::text")


def downgrade() -> None:
    op.execute("ALTER TABLE batch_items ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
