"""`unnest_small` of three arrays: a posting batch's claims with the nonce each must spend.

The posting path's first statement claims its requests' idempotency keys, locks their
members and reads their books (`exchange.store._posting.claim_and_lock`). The signed
requests' nonces were spent by a statement of their own just before it, in the same
database transaction: one round trip of a batch's five. They are now spent by a CTE of
the claim statement itself, and a key is claimed only if its request's nonce was spent
there (a replay is refused before its key is claimed, as before). The claims therefore
travel with their nonce, three arrays unnested together; like the two-array form of 0012,
this one is declared to return one row, so the claim's generic plan stays the nested
loop of index lookups it has always used.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION unnest_small(anyarray, anyarray, anyarray)
        RETURNS TABLE (first anyelement, second anyelement, third anyelement)
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
        SET search_path = pg_catalog
        AS $$ SELECT * FROM unnest($1, $2, $3) $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION unnest_small(anyarray, anyarray, anyarray)")
