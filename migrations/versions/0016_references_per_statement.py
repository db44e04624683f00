"""The journal's references are checked once per statement, not once per row (issue 14).

A posting wrote nine foreign-key checks: its member, partner and reversed posting; each
entry's posting; its lot's member, issuer, posting and source lot. PostgreSQL runs a
foreign-key check as a query per inserted row that also locks the parent row (`FOR KEY
SHARE`). Many concurrent postings for one partner turn that lock into multixacts. Measured with
`exchange bench --statements`, the checks were a quarter of a batch's write statement, and
dropping them outright lowered PostgreSQL's CPU per batch posting by up to a quarter
(docs/performance.md, "Twelfth round").

The same guarantee, set-based:
- After each statement that inserts into `postings`, `entries` or `lots`, one query over
  the statement's transition table looks up each row's parents by primary key and
  refuses the whole statement (SQLSTATE 23503, `foreign_key_violation`, as the foreign
  key did) if one is missing. Each lookup is a scalar subquery, so it is always an index
  probe per row, whatever plan PL/pgSQL keeps for the query.
- What the foreign key also prevented, a parent disappearing from under its rows, is
  refused outright: members, partners and lots are never deleted, truncated or given
  another key (row and statement triggers, same SQLSTATE); postings and entries already
  refuse UPDATE, DELETE and TRUNCATE (`ledger_refuse_change`, `postings_refuse_change`).
  A lot's own references cannot change either. So a reference that was found when its row
  was inserted holds for ever, and no lock on the parent is needed.

The other tables keep their foreign keys: they are written less often than once per
posting (holds, allocations, links, batches, webhooks, settlement).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# (table, column, parent table, parent column): the foreign keys replaced.
_REPLACED = (
    ("postings", "member_id", "members", "member_id"),
    ("postings", "partner_id", "partners", "partner_id"),
    ("postings", "reverses", "postings", "posting_id"),
    ("entries", "posting_id", "postings", "posting_id"),
    ("lots", "member_id", "members", "member_id"),
    ("lots", "issuer_id", "partners", "partner_id"),
    ("lots", "earn_id", "postings", "posting_id"),
    ("lots", "source_lot_id", "lots", "lot_id"),
)
# Each table checked: its key (to name the row refused) and its transition table.
_CHECKED = {"postings": "posting_id", "entries": "posting_id", "lots": "lot_id"}
# Parents that may never lose a row or change a key (postings already refuse both).
_KEPT = {"members": "member_id", "partners": "partner_id", "lots": "lot_id"}


def _constraint(table: str, column: str, parent: str) -> str:
    return f"fk_{table}_{column}_{parent}"


def _check_function(table: str) -> str:
    # Per reference: the condition true when the parent is missing, and how to name it.
    probes = [
        (
            f"(n.{column} IS NOT NULL AND "  # noqa: S608 - constant names, never input
            f"(SELECT 1 FROM {parent} AS p WHERE p.{key} = n.{column}) IS NULL)",
            f"'{parent}.{key} ' || n.{column}",
        )
        for child, column, parent, key in _REPLACED
        if child == table
    ]
    condition = "\n       OR ".join(probe for probe, _ in probes)
    named = " ".join(f"WHEN {probe} THEN {name}" for probe, name in probes)
    return f"""
CREATE FUNCTION ledger_{table}_refer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    -- One primary-key probe per reference of each new row (scalar subqueries are never
    -- turned into hash joins, so a kept plan cannot scan a parent table).
    SELECT n.{_CHECKED[table]}::text AS id, CASE {named} END AS missing INTO orphan
    FROM new_{table} AS n
    WHERE {condition}
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% row % refers to % that does not exist', TG_TABLE_NAME, orphan.id,
            orphan.missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$"""  # noqa: S608 - built from the constant tables above, never from input


_KEEP_FUNCTION = """
CREATE FUNCTION ledger_keep_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are referred to by the journal and keep their keys: % refused',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'foreign_key_violation';
END $$"""

_LOT_IDENTITY = ("member_id", "issuer_id", "earn_id", "source_lot_id")


def upgrade() -> None:
    for table, column, parent, _ in _REPLACED:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {_constraint(table, column, parent)}")
    for table in _CHECKED:
        op.execute(_check_function(table))
        op.execute(
            f"CREATE TRIGGER {table}_refer AFTER INSERT ON {table} "
            f"REFERENCING NEW TABLE AS new_{table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_{table}_refer()"
        )
    op.execute(_KEEP_FUNCTION)
    for table, key in _KEPT.items():
        op.execute(
            f"CREATE TRIGGER {table}_kept BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_keep_referenced()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_key_kept BEFORE UPDATE OF {key} ON {table} FOR EACH ROW "
            f"WHEN (OLD.{key} IS DISTINCT FROM NEW.{key}) "
            "EXECUTE FUNCTION ledger_keep_referenced()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_not_truncated BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_keep_referenced()"
        )
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _LOT_IDENTITY)
    op.execute(
        f"CREATE TRIGGER lots_references_kept BEFORE UPDATE OF {', '.join(_LOT_IDENTITY)} "
        f"ON lots FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION ledger_keep_referenced()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER lots_references_kept ON lots")
    for table in _KEPT:
        for trigger in ("kept", "key_kept", "not_truncated"):
            op.execute(f"DROP TRIGGER {table}_{trigger} ON {table}")
    op.execute("DROP FUNCTION ledger_keep_referenced()")
    for table in _CHECKED:
        op.execute(f"DROP TRIGGER {table}_refer ON {table}")
        op.execute(f"DROP FUNCTION ledger_{table}_refer()")
    for table, column, parent, key in _REPLACED:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {_constraint(table, column, parent)} "
            f"FOREIGN KEY ({column}) REFERENCES {parent} ({key})"
        )
