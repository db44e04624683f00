"""Members SQL on the asyncpg driver: qualifying points (tiers), a balance read with the
tier in the same statement, and what a transfer needs besides the posting path's steps
(the 30-day total). Member-scoped idempotency keys are `_keys.claim_keys` and
`_keys.remember` with `scope=MEMBER_KEYS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from exchange.ledger import MemberBook, PostingType
from exchange.store._connection import Connection
from exchange.store._posting import holds_of, lots_of
from exchange.store._reads import READ_BOOK_SQL

__all__ = [
    "qualifying_points",
    "read_book_with_qualifying",
    "transferred_since",
]

# Earns in the window minus the reversals of those earns. Both parts are index-only scans
# of partial covering indexes (ix_postings_member_id_earned, ..._earn_reversed); a
# reversal looks up its original's posted_at by primary key (reversals are rare).
_QUALIFYING_EXPR = f"""(
    (SELECT coalesce(sum(e.points), 0) FROM postings AS e
     WHERE e.member_id = {{member}} AND e.type = '{PostingType.EARN}' AND e.posted_at > {{since}})
  - (SELECT coalesce(sum(r.points), 0) FROM postings AS r
     JOIN postings AS o ON o.posting_id = r.reverses
     WHERE r.member_id = {{member}} AND r.type = '{PostingType.EARN_REVERSAL}'
       AND o.posted_at > {{since}})
)::bigint"""  # noqa: S608 - constants

_QUALIFYING_SQL = f"""
SELECT m.member_id, {_QUALIFYING_EXPR.format(member="m.member_id", since="$2")} AS points
FROM unnest($1::text[]) AS m(member_id)
"""  # noqa: S608 - built from constants

# The balance read of `_reads`, plus the qualifying points, in the same single statement
# (one round trip, one snapshot); erased members are not found.
_READ_BALANCE_SQL = READ_BOOK_SQL.replace(
    "\nFROM members AS m\nWHERE m.member_id = $1\n",
    f", {_QUALIFYING_EXPR.format(member='m.member_id', since='$3')} AS qualifying"
    "\nFROM members AS m\nWHERE m.member_id = $1 AND m.status = 'active'\n",
)
if _READ_BALANCE_SQL == READ_BOOK_SQL:  # pragma: no cover - caught by any balance test
    raise RuntimeError("the balance read's statement changed shape; update _READ_BALANCE_SQL")


async def qualifying_points(
    conn: Connection, member_ids: Iterable[str], since: datetime
) -> dict[str, int]:
    """Each member's qualifying points: earned after `since`, net of their reversals."""
    rows = await conn.fetch(_QUALIFYING_SQL, sorted(set(member_ids)), since)
    return {row["member_id"]: int(row["points"]) for row in rows}


async def read_book_with_qualifying(
    conn: Connection, member_id: str, *, linked_to: str | None, since: datetime
) -> tuple[MemberBook, datetime, int] | None:
    """`read_book` and the member's qualifying points since `since`, in one statement."""
    row = await conn.fetchrow(_READ_BALANCE_SQL, member_id, linked_to, since)
    if row is None:
        return None
    book = MemberBook(member_id=member_id, debt=row["debt"])
    for lot in lots_of(row["lots"]):
        book.lots[lot.lot_id] = lot
    for hold in holds_of(row["holds"]):
        book.holds[hold.hold_id] = hold
    return book, row["closed_until"], int(row["qualifying"])


_TRANSFERRED_SQL = f"""
SELECT coalesce(sum(points), 0)::bigint FROM postings
WHERE member_id = $1 AND type = '{PostingType.TRANSFER_OUT}' AND posted_at > $2
"""  # noqa: S608 - a constant


async def transferred_since(conn: Connection, member_id: str, since: datetime) -> int:
    """Points the member transferred out after `since` (call with the member locked)."""
    return int(await conn.fetchval(_TRANSFERRED_SQL, member_id, since))
