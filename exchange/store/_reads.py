"""Reads off the write path, on the asyncpg driver: a member's book for a balance read
(no locks), and the members with something fallen due (for the sweep).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from exchange.ledger import EXPIRING_LOTS_SHOWN_MAX, MemberBook
from exchange.store._connection import Connection
from exchange.store._posting import (
    HOLD_JSON,
    LOT_COLUMNS,
    LOT_COLUMNS_OF_L,
    LeftOut,
    holds_of,
    leave_out,
    lots_of,
)

__all__ = ["book_columns", "book_of", "due_member_ids", "read_book"]


# -- reads -----------------------------------------------------------------------------------


# The book of the member row `m`, as columns: its debt, open lots, open holds with what
# they reserved, and the lots those holds reserved from (an expired hold's points flow
# back through them). Correlated on the one member, so every part is an index lookup.
# With a moment as `due_by` the book is partial, by the rule of `ledger_books` (migration
# 0021): a member with no debt and no open hold leaves out its matured lots with points
# that expire after `due_by`; `unloaded` is their points, and their sums on their soonest
# expiry dates, in one pass. `tests/integration/test_partial_books.py` holds the
# two to the whole book's answers, and `tests/integration/test_book_draws.py` holds the
# holds' branch to their own draws (in custom and generic plans; migration 0025 fenced
# the same join in `ledger_books`, where a generic plan had read every draw).
_LEFT_OUT = """{due_by}::timestamptz IS NOT NULL AND m.debt = 0
               AND NOT EXISTS (SELECT 1 FROM holds AS h
                               WHERE h.member_id = m.member_id AND h.status = 'open')
               AND matured AND remaining > 0 AND expires_at > {due_by}::timestamptz"""


def book_columns(due_by: str) -> str:
    """The book of the member row `m`, as columns; `due_by` is the parameter (say "$3")
    naming the latest moment the book will be applied at, or NULL for the whole book."""
    left_out = _LEFT_OUT.format(due_by=due_by)
    return f"""m.debt, (SELECT closed_until FROM ledger_state WHERE id = 1) AS closed_until,
       (SELECT coalesce(json_agg(json_build_array({LOT_COLUMNS})), '[]')::text
        FROM (SELECT {LOT_COLUMNS} FROM lots
              WHERE member_id = m.member_id AND (remaining > 0 OR NOT matured)
                AND NOT ({left_out})
              UNION ALL
              SELECT {LOT_COLUMNS_OF_L}
              FROM holds AS h
              JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
              JOIN lots AS l ON l.lot_id = a.lot_id
              WHERE h.member_id = m.member_id AND h.status = 'open') AS book_lots) AS lots,
       (SELECT json_build_array(coalesce(sum(points), 0),
                                json_agg(json_build_array(expires_at, points) ORDER BY expires_at)
                                  FILTER (WHERE soonest <= {EXPIRING_LOTS_SHOWN_MAX}))::text
        FROM (SELECT expires_at, sum(remaining) AS points,
                     row_number() OVER (ORDER BY expires_at) AS soonest
              FROM lots
              WHERE member_id = m.member_id AND (remaining > 0 OR NOT matured) AND {left_out}
              GROUP BY expires_at) AS left_out_dates) AS unloaded,
       (SELECT coalesce(json_agg({HOLD_JSON}), '[]')::text
        FROM holds AS h WHERE h.member_id = m.member_id AND h.status = 'open') AS holds"""  # noqa: S608 - built from constant column lists, never from input


# One statement, so one snapshot: the member's book, if linked to the asking partner.
READ_BOOK_SQL = f"""
SELECT {book_columns("$3")}
FROM members AS m
WHERE m.member_id = $1
  AND ($2::text IS NULL OR EXISTS (
      SELECT 1 FROM member_links AS k WHERE k.member_id = $1 AND k.partner_id = $2))
"""  # noqa: S608 - built from constant column lists, never from input


async def read_book(
    conn: Connection,
    member_id: str,
    *,
    linked_to: str | None = None,
    due_by: datetime | None = None,
) -> tuple[MemberBook, datetime] | None:
    """A member's book for a balance read (no locks), or None for an unknown member (or,
    with `linked_to`, one not linked to that partner). With `due_by`, a partial book, good
    for a balance at `due_by` or before (`MemberBook.unloaded`)."""
    row = await conn.fetchrow(READ_BOOK_SQL, member_id, linked_to, due_by)
    if row is None:
        return None
    return book_of(member_id, row), row["closed_until"]


_LEFT_OUT_DECODER = msgspec.json.Decoder(LeftOut)


def book_of(member_id: str, row: asyncpg.Record) -> MemberBook:
    """The book a row of `book_columns` holds."""
    book = MemberBook(member_id=member_id, debt=row["debt"])
    leave_out(book, _LEFT_OUT_DECODER.decode(row["unloaded"]))
    for lot in lots_of(row["lots"]):
        book.lots[lot.lot_id] = lot
    for hold in holds_of(row["holds"]):
        book.holds[hold.hold_id] = hold
    return book


_DUE_SQL = """
SELECT member_id FROM (
    (SELECT member_id FROM lots WHERE remaining > 0 AND expires_at <= $1 LIMIT $2)
    UNION (SELECT member_id FROM lots WHERE NOT matured AND available_at <= $1 LIMIT $2)
    UNION (SELECT member_id FROM holds WHERE status = 'open' AND expires_at <= $1 LIMIT $2)
) AS due ORDER BY member_id LIMIT $2
"""


async def due_member_ids(conn: Connection, now: datetime, limit: int) -> list[str]:
    """Members with something fallen due by `now` (partial indexes on open lots/holds)."""
    return [row["member_id"] for row in await conn.fetch(_DUE_SQL, now, limit)]
