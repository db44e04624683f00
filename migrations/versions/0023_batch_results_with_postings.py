"""A batch item's result is written with its posting: the result is the item's record.

Until now each batch item posted under the ledger idempotency key `batch-item:<item_id>`,
and its result was recorded by a second database transaction after the posting's. After
a crash between the two, the item was still pending, and posting it again replayed the
key's stored answer. The result is now written in the posting's own transaction
(`exchange.batches.service`), and batch postings carry no key.

An item posted under the old scheme whose result was never recorded (a crash between the
two transactions, then this upgrade) would be posted a second time without its key. This
migration records the result of every such item of an unfinished batch, from the posting
that carries its key: `posted`, with the transaction id its stored answer holds (the
items' answer, or for items posted before the sixteenth round the single endpoint's
whole response, which has the same field), under the batch that posted it.

The downgrade changes nothing: the old code reads these results as it reads its own.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_RECORD_POSTED_UNDER_KEYS = """
INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id, code, batch_id)
SELECT DISTINCT ON (b.partner_id, i.item_id)
       b.partner_id, i.item_id, 'posted',
       convert_from(p.response, 'UTF8')::jsonb ->> 'transaction_id', NULL,
       coalesce(p.batch_id, b.batch_id)
FROM batches AS b
JOIN batch_items AS i ON i.batch_id = b.batch_id
JOIN postings AS p
  ON p.partner_id = b.partner_id AND p.idempotency_key = 'batch-item:' || i.item_id
WHERE b.status = 'processing'
  AND NOT EXISTS (SELECT 1 FROM batch_item_results AS r
                  WHERE r.partner_id = b.partner_id AND r.item_id = i.item_id)
ORDER BY b.partner_id, i.item_id
ON CONFLICT DO NOTHING
"""


def upgrade() -> None:
    op.execute(_RECORD_POSTED_UNDER_KEYS)


def downgrade() -> None:
    pass
