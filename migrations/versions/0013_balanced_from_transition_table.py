"""The balance guard sums the statement's own entries (issue 16: PostgreSQL's CPU per posting).

`ledger_check_balanced` ran, for every posting a statement touched, a subquery over all of
that posting's entries in `entries`: 1.6 ms of the write of 250 postings. It now sums the
statement's new entries per posting (its transition table), 0.5 ms.

The guarantee is the same. `entries` is append-only (UPDATE, DELETE and TRUNCATE are
refused by `ledger_refuse_change`), so a posting's entries are the union of what each
statement inserted for it; if every statement's entries for each posting sum to zero, so
do all of them. An entry appended later to a balanced posting is refused as before,
unless it comes with its counter-entry in the same statement, which the old guard let
through too.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
BEGIN
    -- {comment}
    {query}
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'posting % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
"""

_STATEMENT_SUMS = (
    "Each posting's entries of this statement sum to zero (entries are append-only).",
    "SELECT posting_id INTO unbalanced FROM new_entries\n"
    "    GROUP BY posting_id HAVING sum(amount) <> 0 LIMIT 1;",
)
_ALL_ENTRIES = (
    "One primary-key range per posting touched (never a scan of the whole journal).",
    "SELECT touched.posting_id INTO unbalanced\n"
    "    FROM (SELECT DISTINCT posting_id FROM new_entries) AS touched\n"
    "    WHERE (SELECT sum(e.amount) FROM entries AS e WHERE e.posting_id = touched.posting_id)"
    " <> 0\n    LIMIT 1;",
)


def _install(comment: str, query: str) -> None:
    op.execute(_FUNCTION.format(comment=comment, query=query))


def upgrade() -> None:
    _install(*_STATEMENT_SUMS)


def downgrade() -> None:
    _install(*_ALL_ENTRIES)
