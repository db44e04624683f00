"""`ledger_books` can leave out the lots an earn never touches: partial books.

A posting loaded every open lot of its member, so its cost grew with the member's history:
in process, a lone earn took 5.0 ms for a member with one open lot and 14.4 ms with 1,000
(docs/performance.md, "Fifteenth round"). An earn only touches the lots that fall due,
the lots not yet matured and the lot it creates; its balance needs the rest only as sums.

With `due_by` given, the function leaves a member's lot out of `lots` when all of these
hold:
- the member owes no debt, and has no open hold (so no lot is reserved, and no repayment
  can draw on it);
- the lot is matured and has points left;
- it expires after `due_by`, the latest moment the caller will apply the book at.

Such a lot is spendable at every moment up to `due_by`, and no earn changes it. Its points
go to the member's entry in `unloaded` (a JSON object): the total, and the sums on the
five soonest expiry dates among such lots (a balance lists five dates: the soonest five
of the loaded lots and of these together are among them). The store asks for
partial books only for batches of earns and for balance reads; everything else (`due_by`
NULL) reads whole books as before. With `due_by`, named lots and holds are refused,
because a lot read twice would count twice.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

EXPIRY_DATES_LISTED = 5  # exchange.ledger.EXPIRING_LOTS_SHOWN_MAX when this was written

_LOT_COLUMNS = """l.lot_id, l.member_id, l.issuer_id, l.earn_id, l.initial, l.remaining,
                         l.unit_price, l.available_at, l.expires_at, l.matured, l.created_at,
                         l.source_lot_id"""

_HOLDS = """(SELECT coalesce(json_agg(json_build_array(
                   h.hold_id, h.member_id, h.partner_id, h.points, h.status, h.created_at,
                   h.expires_at, h.reference, h.captured_points, h.transaction_id, h.closed_at,
                   (SELECT json_agg(json_build_array(a.lot_id, a.points)
                                    ORDER BY l.expires_at, l.created_at, l.lot_id)
                    FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
                    WHERE a.posting_id = h.hold_posting_id AND a.kind = 'draw'))), '[]')::text
               FROM book_holds AS h)"""

# The closing time, then the lots as one JSON array (of the subquery that follows).
_SELECT_STATE_AND_LOTS = """SELECT
              (SELECT s.closed_until FROM ledger_state AS s WHERE s.id = 1),
              (SELECT coalesce(json_agg(json_build_array(
                   lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,
                   available_at, expires_at, matured, created_at, source_lot_id)), '[]')::text
               FROM ("""

_BOOK_HOLDS = """book_holds AS (
                SELECT h.* FROM unnest_small(member_ids) AS asked(member_id)
                JOIN holds AS h ON h.member_id = asked.member_id AND h.status = 'open'
                UNION ALL
                SELECT h.* FROM unnest_small(hold_ids) AS asked(hold_id)
                JOIN holds AS h ON h.hold_id = asked.hold_id
                WHERE NOT (h.status = 'open' AND h.member_id = ANY(member_ids)))"""

_OTHER_LOTS = f"""SELECT {_LOT_COLUMNS} FROM unnest_small(lot_ids) AS asked(lot_id)
                  JOIN lots AS l ON l.lot_id = asked.lot_id
                  UNION ALL
                  SELECT {_LOT_COLUMNS} FROM book_holds AS h
                  JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
                  JOIN lots AS l ON l.lot_id = a.lot_id"""  # noqa: S608 - constant text


def upgrade() -> None:
    op.execute("DROP FUNCTION ledger_books(text[], uuid[], uuid[])")
    op.execute(
        f"""
        CREATE FUNCTION ledger_books(
            member_ids text[], lot_ids uuid[], hold_ids uuid[], due_by timestamptz)
        RETURNS TABLE (closed_until timestamptz, lots text, holds text, unloaded text)
        LANGUAGE plpgsql VOLATILE ROWS 1
        AS $$
        #variable_conflict use_column
        BEGIN
            IF due_by IS NOT NULL AND (cardinality(lot_ids) > 0 OR cardinality(hold_ids) > 0)
            THEN
                RAISE EXCEPTION 'ledger_books: a partial book takes no named lots or holds';
            END IF;
            -- A fresh snapshot: call this after the members' locks (and the settlement
            -- barrier) are held, and it sees what their previous holders committed.
            RETURN QUERY
            WITH {_BOOK_HOLDS},
            asked_members AS (
                SELECT m.member_id,
                       due_by IS NOT NULL AND m.debt = 0
                       AND NOT EXISTS (SELECT 1 FROM holds AS h
                                       WHERE h.member_id = m.member_id AND h.status = 'open')
                       AS partial
                FROM unnest_small(member_ids) AS asked(member_id)
                JOIN members AS m ON m.member_id = asked.member_id),
            left_out_dates AS (
                SELECT l.member_id, l.expires_at, sum(l.remaining) AS points,
                       row_number() OVER (PARTITION BY l.member_id ORDER BY l.expires_at)
                         AS soonest
                FROM asked_members AS a
                JOIN lots AS l
                  ON l.member_id = a.member_id AND (l.remaining > 0 OR NOT l.matured)
                WHERE a.partial AND l.matured AND l.remaining > 0 AND l.expires_at > due_by
                GROUP BY l.member_id, l.expires_at)
            {_SELECT_STATE_AND_LOTS}
                  SELECT {_LOT_COLUMNS} FROM asked_members AS a
                  JOIN lots AS l
                    ON l.member_id = a.member_id AND (l.remaining > 0 OR NOT l.matured)
                  WHERE NOT (a.partial AND l.matured AND l.remaining > 0
                             AND l.expires_at > due_by)
                  UNION ALL
                  {_OTHER_LOTS}
              ) AS book_lots),
              {_HOLDS},
              (SELECT coalesce(json_object_agg(member_id, json_build_array(points, soonest)),
                               '{{}}')::text
               FROM (SELECT member_id, sum(points) AS points,
                            json_agg(json_build_array(expires_at, points) ORDER BY expires_at)
                              FILTER (WHERE soonest <= {EXPIRY_DATES_LISTED}) AS soonest
                     FROM left_out_dates GROUP BY member_id) AS t);
        END $$
        """  # noqa: S608 - built from the constants above, never from input
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_books(text[], uuid[], uuid[], timestamptz)")
    op.execute(
        f"""
        CREATE FUNCTION ledger_books(member_ids text[], lot_ids uuid[], hold_ids uuid[])
        RETURNS TABLE (closed_until timestamptz, lots text, holds text)
        LANGUAGE plpgsql VOLATILE ROWS 1
        AS $$
        #variable_conflict use_column
        BEGIN
            RETURN QUERY
            WITH {_BOOK_HOLDS}
            {_SELECT_STATE_AND_LOTS}
                  SELECT {_LOT_COLUMNS} FROM unnest_small(member_ids) AS asked(member_id)
                  JOIN lots AS l
                    ON l.member_id = asked.member_id AND (l.remaining > 0 OR NOT l.matured)
                  UNION ALL
                  {_OTHER_LOTS}
              ) AS book_lots),
              {_HOLDS};
        END $$
        """  # noqa: S608 - built from the constants above, never from input
    )
