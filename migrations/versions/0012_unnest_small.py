"""`unnest_small`: an array's elements, planned as a small set (issue 16: planning cost).

PostgreSQL estimates an array parameter of unknown length at ten elements. The posting
path's statements (claim, lock, books) take one element per request of a batch; for a
batch of one to a few requests their custom plan (the array's real length) always looked
cheaper than the generic one, so each was planned anew on every call: about 0.7 ms of
PostgreSQL CPU per batch, more than the whole write of a lone earn. Joined through
`unnest_small`, whose declared estimate is one row, the generic plan costs what the custom
one does, and the plan cache keeps it after five executions. The shape it plans (a nested
loop of index lookups, one per element) is the one large batches already used.

The `SET search_path` clause pins name resolution and keeps the function from being
inlined (an inlined body would bring back `unnest`'s ten-element estimate).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION unnest_small(anyarray) RETURNS SETOF anyelement
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
        SET search_path = pg_catalog
        AS $$ SELECT unnest($1) $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION unnest_small(anyarray, anyarray)
        RETURNS TABLE (first anyelement, second anyelement)
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
        SET search_path = pg_catalog
        AS $$ SELECT * FROM unnest($1, $2) $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION unnest_small(anyarray, anyarray)")
    op.execute("DROP FUNCTION unnest_small(anyarray)")
