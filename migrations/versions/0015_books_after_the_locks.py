"""`ledger_books`: the posting path reads the books in the statement that locks the members
(issue 16: "fold the books into the lock").

A posting transaction locks its members, then reads their books (open lots, open holds
with the lots they reserved, named lots and holds, and the journal's closing time) in a
statement of its own. It has to be a later statement: a statement's snapshot is taken when
it starts, before it waits for a member's lock, so books read in the locking statement
would miss what the previous holder of the lock committed while this one waited.

A VOLATILE function takes a fresh snapshot for each query it runs (PostgreSQL's rule for
VOLATILE functions, which is also why it is never inlined). So the locking statement can
call this function once its locks are held (its argument is the locked members, a
subquery over the materialized locking CTE, evaluated before the function's first row is
asked for) and the query inside sees everything committed before the locks were granted.
That is one round trip fewer for every batch of earns, burns and new holds.

The query is the one `exchange/store/_posting.py` sent as a statement until now, with its
parameters named; the store reads every book through this function, so the query exists
in one place. PL/pgSQL keeps its plan per connection, as the prepared statement did. The
lots' columns are `LotRow`'s, in its order; the store decodes them by position, so a
column added to `lots` and `LotRow` without this function fails every test that reads a
book.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_books(member_ids text[], lot_ids uuid[], hold_ids uuid[])
        RETURNS TABLE (closed_until timestamptz, lots text, holds text)
        LANGUAGE plpgsql VOLATILE ROWS 1
        AS $$
        #variable_conflict use_column
        BEGIN
            -- A fresh snapshot: call this after the members' locks (and the settlement
            -- barrier) are held, and it sees what their previous holders committed.
            RETURN QUERY
            WITH book_holds AS (
                SELECT h.* FROM unnest_small(member_ids) AS asked(member_id)
                JOIN holds AS h ON h.member_id = asked.member_id AND h.status = 'open'
                UNION ALL
                SELECT h.* FROM unnest_small(hold_ids) AS asked(hold_id)
                JOIN holds AS h ON h.hold_id = asked.hold_id
                WHERE NOT (h.status = 'open' AND h.member_id = ANY(member_ids)))
            SELECT
              (SELECT s.closed_until FROM ledger_state AS s WHERE s.id = 1),
              (SELECT coalesce(json_agg(json_build_array(
                   lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,
                   available_at, expires_at, matured, created_at, source_lot_id)), '[]')::text
               FROM (
                  SELECT l.lot_id, l.member_id, l.issuer_id, l.earn_id, l.initial, l.remaining,
                         l.unit_price, l.available_at, l.expires_at, l.matured, l.created_at,
                         l.source_lot_id FROM unnest_small(member_ids) AS asked(member_id)
                  JOIN lots AS l
                    ON l.member_id = asked.member_id AND (l.remaining > 0 OR NOT l.matured)
                  UNION ALL
                  SELECT l.lot_id, l.member_id, l.issuer_id, l.earn_id, l.initial, l.remaining,
                         l.unit_price, l.available_at, l.expires_at, l.matured, l.created_at,
                         l.source_lot_id FROM unnest_small(lot_ids) AS asked(lot_id)
                  JOIN lots AS l ON l.lot_id = asked.lot_id
                  UNION ALL
                  SELECT l.lot_id, l.member_id, l.issuer_id, l.earn_id, l.initial, l.remaining,
                         l.unit_price, l.available_at, l.expires_at, l.matured, l.created_at,
                         l.source_lot_id FROM book_holds AS h
                  JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
                  JOIN lots AS l ON l.lot_id = a.lot_id
              ) AS book_lots),
              (SELECT coalesce(json_agg(json_build_array(
                   h.hold_id, h.member_id, h.partner_id, h.points, h.status, h.created_at,
                   h.expires_at, h.reference, h.captured_points, h.transaction_id, h.closed_at,
                   (SELECT json_agg(json_build_array(a.lot_id, a.points)
                                    ORDER BY l.expires_at, l.created_at, l.lot_id)
                    FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
                    WHERE a.posting_id = h.hold_posting_id AND a.kind = 'draw'))), '[]')::text
               FROM book_holds AS h);
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_books(text[], uuid[], uuid[])")
