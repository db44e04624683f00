"""A batch's items and results check their references once per statement (issue 14).

The same change as 0016 made for the journal, for the two references a batch posting
still checked row by row: each stored item's batch (`batch_items.batch_id`), at upload,
and each item id's first result's partner (`batch_item_results.partner_id`), as a chunk
is recorded. A foreign key runs a query per row and locks the parent row (`FOR KEY
SHARE`); here one statement trigger per table probes each new row's parent by primary
key over the statement's transition table, and refuses the whole statement with SQLSTATE
23503 (`foreign_key_violation`) naming the row's parent that is missing.

What the foreign key also prevented, a parent disappearing, is refused outright: partners
already keep their rows and keys (0016), and batches now do too (no DELETE, no TRUNCATE,
no change of `batch_id`; a batch's other columns still change as it is processed). So a
reference found when its row was inserted holds for ever.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# (table, column, parent table, parent column, the constraint replaced)
_REPLACED = (
    ("batch_items", "batch_id", "batches", "batch_id", "fk_batch_items_batch_id_batches"),
    (
        "batch_item_results",
        "partner_id",
        "partners",
        "partner_id",
        "fk_batch_item_results_partner_id_partners",
    ),
)


def _check_function(table: str, column: str, parent: str, key: str) -> str:
    # A scalar subquery is never turned into a hash join: always an index probe per row,
    # whatever plan PL/pgSQL keeps for the query.
    return f"""
CREATE FUNCTION batches_{table}_refer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    SELECT n.{column} INTO missing FROM new_{table} AS n
    WHERE (SELECT 1 FROM {parent} AS p WHERE p.{key} = n.{column}) IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% row refers to {parent}.{key} % that does not exist',
            TG_TABLE_NAME, missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$"""  # noqa: S608 - built from the constant tables above, never from input


_KEEP_FUNCTION = """
CREATE FUNCTION batches_keep_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batches are referred to by their items and keep their keys: % refused',
        TG_OP USING ERRCODE = 'foreign_key_violation';
END $$"""


def upgrade() -> None:
    for table, column, parent, key, constraint in _REPLACED:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
        op.execute(_check_function(table, column, parent, key))
        op.execute(
            f"CREATE TRIGGER {table}_refer AFTER INSERT ON {table} "
            f"REFERENCING NEW TABLE AS new_{table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION batches_{table}_refer()"
        )
    op.execute(_KEEP_FUNCTION)
    op.execute(
        "CREATE TRIGGER batches_kept BEFORE DELETE ON batches "
        "FOR EACH ROW EXECUTE FUNCTION batches_keep_referenced()"
    )
    op.execute(
        "CREATE TRIGGER batches_key_kept BEFORE UPDATE OF batch_id ON batches FOR EACH ROW "
        "WHEN (OLD.batch_id IS DISTINCT FROM NEW.batch_id) "
        "EXECUTE FUNCTION batches_keep_referenced()"
    )
    op.execute(
        "CREATE TRIGGER batches_not_truncated BEFORE TRUNCATE ON batches "
        "FOR EACH STATEMENT EXECUTE FUNCTION batches_keep_referenced()"
    )


def downgrade() -> None:
    for trigger in ("kept", "key_kept", "not_truncated"):
        op.execute(f"DROP TRIGGER batches_{trigger} ON batches")
    op.execute("DROP FUNCTION batches_keep_referenced()")
    for table, column, parent, key, constraint in _REPLACED:
        op.execute(f"DROP TRIGGER {table}_refer ON {table}")
        op.execute(f"DROP FUNCTION batches_{table}_refer()")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} "
            f"FOREIGN KEY ({column}) REFERENCES {parent} ({key})"
        )
