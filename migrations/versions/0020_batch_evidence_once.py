"""A batch posting's evidence is its batch's stored signature, not a copy on every posting.

A posting made from a batch file carried the file's verified signature like a single
request's posting does: key id, Signature-Input, signature, digest and the signature base,
about 830 bytes, the same on every one of the file's up to 10,000 postings (8 MB of copies
for one full file, and a share of every batch posting's write: docs/performance.md,
"Thirteenth round"). The batch row already keeps that signature. Now such a posting names
its batch (`postings.batch_id`) and keeps no copy; `posting_signatures`, what `exchange
audit` reads, finds a posting's signature on its own row or on its batch's. The posting
names its batch in the same statement that writes it, so its evidence is findable from the
moment it commits.

- `batch_id` is checked like the posting's other references (0016): the statement trigger
  probes `batches` by primary key, and batches keep their rows and keys (0019).
- A posting has one evidence at most: `batch_id IS NULL OR signature IS NULL`.
- Postings written before keep their copies; the downgrade copies the batch's signature
  back onto the postings that name a batch.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# A posting's references (column, parent table, parent key), as 0016 checks them; 0020 adds
# its batch.
_REFERENCES_0016 = (
    ("member_id", "members", "member_id"),
    ("partner_id", "partners", "partner_id"),
    ("reverses", "postings", "posting_id"),
)
_REFERENCES = (*_REFERENCES_0016, ("batch_id", "batches", "batch_id"))


def _postings_refer(references: tuple[tuple[str, str, str], ...]) -> str:
    """0016's statement check of new postings, for the given references."""
    probes = [
        (
            f"(n.{column} IS NOT NULL AND "  # noqa: S608 - constant names, never input
            f"(SELECT 1 FROM {parent} AS p WHERE p.{key} = n.{column}) IS NULL)",
            f"'{parent}.{key} ' || n.{column}",
        )
        for column, parent, key in references
    ]
    condition = "\n       OR ".join(probe for probe, _ in probes)
    named = " ".join(f"WHEN {probe} THEN {name}" for probe, name in probes)
    return f"""
CREATE OR REPLACE FUNCTION ledger_postings_refer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    -- One primary-key probe per reference of each new row (scalar subqueries are never
    -- turned into hash joins, so a kept plan cannot scan a parent table).
    SELECT n.posting_id::text AS id, CASE {named} END AS missing INTO orphan
    FROM new_postings AS n
    WHERE {condition}
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% row % refers to % that does not exist', TG_TABLE_NAME, orphan.id,
            orphan.missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$"""  # noqa: S608 - built from the constant tables above, never from input


_OWN_SIGNATURES = """
SELECT posting_id, signature_key_id AS key_id, signature_input, signature, content_digest,
       signature_base
FROM postings WHERE signature IS NOT NULL"""

_BATCH_SIGNATURES = """
SELECT p.posting_id, b.key_id, b.signature_input, b.signature, b.content_digest,
       b.signature_base
FROM postings AS p JOIN batches AS b ON b.batch_id = p.batch_id
WHERE p.batch_id IS NOT NULL"""


def upgrade() -> None:
    op.add_column("postings", sa.Column("batch_id", sa.String(64), nullable=True))
    op.create_check_constraint(
        op.f("ck_postings_evidence"), "postings", "batch_id IS NULL OR signature IS NULL"
    )
    op.execute(_postings_refer(_REFERENCES))
    op.execute(
        f"CREATE OR REPLACE VIEW posting_signatures AS {_OWN_SIGNATURES}\n"
        f"UNION ALL{_BATCH_SIGNATURES}"
    )


def downgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW posting_signatures AS {_OWN_SIGNATURES}")
    op.execute(_postings_refer(_REFERENCES_0016))
    op.drop_constraint(op.f("ck_postings_evidence"), "postings", type_="check")
    # Postings are append-only: only with triggers off (as a restore would) can the copies
    # go back onto them.
    op.execute("SET LOCAL session_replication_role = replica")
    op.execute("""
        UPDATE postings AS p
        SET signature_key_id = b.key_id, signature_input = b.signature_input,
            signature = b.signature, content_digest = b.content_digest,
            signature_base = b.signature_base
        FROM batches AS b WHERE b.batch_id = p.batch_id
    """)
    op.execute("SET LOCAL session_replication_role = origin")
    op.drop_column("postings", "batch_id")
