"""Each parent a statement's new rows refer to is probed once, not once per row (issue 14).

0016 and 0019 check the references of `postings`, `entries`, `lots`, `batch_items` and
`batch_item_results` once per statement, with one primary-key probe per reference of
each new row. Most of those probes repeat: the 1,000 items of an upload name one batch,
a chunk's 250 postings and lots name one partner and one batch, and each posting has two
entries. `exchange bench --statements` put the five checks at about 14% of PostgreSQL's
statement time per batch posting (docs/performance.md, "Seventeenth round").

Each check now probes the distinct non-NULL keys of each reference column over the
statement's transition table: the same parents, the same refusal (SQLSTATE 23503, the
row and the missing key named), a probe per parent instead of per row. Each probe is
still a scalar subquery, so it is always an index probe, whatever plan PL/pgSQL keeps.
Only a refused statement looks for a row to name, with one more query over the
transition table.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# (function, table, the column naming a refused row, its references (column, parent table,
# parent key)): each statement check of 0016, 0019 and 0020, with its references.
_CHECKS = (
    (
        "ledger_postings_refer",
        "postings",
        "posting_id",
        (
            ("member_id", "members", "member_id"),
            ("partner_id", "partners", "partner_id"),
            ("reverses", "postings", "posting_id"),
            ("batch_id", "batches", "batch_id"),
        ),
    ),
    ("ledger_entries_refer", "entries", "posting_id", (("posting_id", "postings", "posting_id"),)),
    (
        "ledger_lots_refer",
        "lots",
        "lot_id",
        (
            ("member_id", "members", "member_id"),
            ("issuer_id", "partners", "partner_id"),
            ("earn_id", "postings", "posting_id"),
            ("source_lot_id", "lots", "lot_id"),
        ),
    ),
    ("batches_batch_items_refer", "batch_items", "seq", (("batch_id", "batches", "batch_id"),)),
    (
        "batches_batch_item_results_refer",
        "batch_item_results",
        "item_id",
        (("partner_id", "partners", "partner_id"),),
    ),
)

_RAISE = """
    IF FOUND THEN
        RAISE EXCEPTION '% row % refers to % that does not exist', TG_TABLE_NAME, orphan.id,
            orphan.missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$"""


def _probed_once(
    function: str, table: str, named_by: str, references: tuple[tuple[str, str, str], ...]
) -> str:
    """The check probing each distinct parent once; a refused statement's row named after."""
    missing = "\n    UNION ALL\n    ".join(
        f"SELECT '{column}' AS reference, '{parent}.{key} ' || d.k AS missing "  # noqa: S608
        f"FROM (SELECT DISTINCT {column} AS k FROM new_{table} "
        f"WHERE {column} IS NOT NULL) AS d "
        f"WHERE (SELECT 1 FROM {parent} AS p WHERE p.{key} = d.k) IS NULL"
        for column, parent, key in references
    )
    rows = " ".join(
        f"WHEN '{column}' THEN (SELECT n.{named_by}::text FROM new_{table} AS n "  # noqa: S608
        f"WHERE '{parent}.{key} ' || n.{column} = orphan.missing LIMIT 1)"
        for column, parent, key in references
    )
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    -- One primary-key probe per distinct parent of the new rows (scalar subqueries are
    -- never turned into hash joins, so a kept plan cannot scan a parent table).
    SELECT NULL::text AS id, o.reference, o.missing INTO orphan FROM (
    {missing}
    ) AS o LIMIT 1;
    IF FOUND THEN
        orphan.id := CASE orphan.reference {rows} END;
    END IF;{_RAISE}"""  # noqa: S608 - built from the constant tables above, never from input


def _per_row(
    function: str, table: str, named_by: str, references: tuple[tuple[str, str, str], ...]
) -> str:
    """0016's form: one probe per reference of each new row."""
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
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    SELECT n.{named_by}::text AS id, CASE {named} END AS missing INTO orphan
    FROM new_{table} AS n
    WHERE {condition}
    LIMIT 1;{_RAISE}"""  # noqa: S608 - built from the constant tables above, never from input


def upgrade() -> None:
    for check in _CHECKS:
        op.execute(_probed_once(*check))


def downgrade() -> None:
    # The per-row checks, each refusing as before (the two batch checks now also name the
    # row, as the journal's do).
    for check in _CHECKS:
        op.execute(_per_row(*check))
