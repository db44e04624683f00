"""Members SQL on the asyncpg driver: qualifying points (tiers), a balance read with the
tier in the same statement, and what a transfer needs besides the posting path's steps
(the 30-day total, member-scoped idempotency keys).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from exchange.ledger import MemberBook
from exchange.store._posting import Connection, _holds, _lots
from exchange.store._reads import _READ_BOOK_SQL
from exchange.store._records import StoredResponse

__all__ = [
    "claim_member_key",
    "qualifying_points",
    "read_book_with_qualifying",
    "save_member_key",
    "transferred_since",
]

# Earns in the window minus the reversals of those earns. Both parts are index-only scans
# of partial covering indexes (ix_postings_member_id_earned, ..._earn_reversed); a
# reversal looks up its original's posted_at by primary key (reversals are rare).
_QUALIFYING_EXPR = """(
    (SELECT coalesce(sum(e.points), 0) FROM postings AS e
     WHERE e.member_id = {member} AND e.type = 'earn' AND e.posted_at > {since})
  - (SELECT coalesce(sum(r.points), 0) FROM postings AS r
     JOIN postings AS o ON o.posting_id = r.reverses
     WHERE r.member_id = {member} AND r.type = 'earn_reversal' AND o.posted_at > {since})
)::bigint"""

_QUALIFYING_SQL = f"""
SELECT m.member_id, {_QUALIFYING_EXPR.format(member="m.member_id", since="$2")} AS points
FROM unnest($1::text[]) AS m(member_id)
"""  # noqa: S608 - built from constants

# The balance read of `_reads`, plus the qualifying points, in the same single statement
# (one round trip, one snapshot); erased members are not found.
_READ_BALANCE_SQL = _READ_BOOK_SQL.replace(
    "\nFROM members AS m\nWHERE m.member_id = $1\n",
    f", {_QUALIFYING_EXPR.format(member='m.member_id', since='$3')} AS qualifying"
    "\nFROM members AS m\nWHERE m.member_id = $1 AND m.status = 'active'\n",
)
if _READ_BALANCE_SQL == _READ_BOOK_SQL:  # pragma: no cover - caught by any balance test
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
    for lot in _lots(row["lots"]):
        book.lots[lot.lot_id] = lot
    for hold in _holds(row["holds"]):
        book.holds[hold.hold_id] = hold
    return book, row["closed_until"], int(row["qualifying"])


_TRANSFERRED_SQL = """
SELECT coalesce(sum(points), 0)::bigint FROM postings
WHERE member_id = $1 AND type = 'transfer_out' AND posted_at > $2
"""


async def transferred_since(conn: Connection, member_id: str, since: datetime) -> int:
    """Points the member transferred out after `since` (call with the member locked)."""
    return int(await conn.fetchval(_TRANSFERRED_SQL, member_id, since))


# The same exactly-once steps as partner keys (`claim_keys`): try-lock the key for this
# database transaction (never wait), then read what is stored under it.
_CLAIM_MEMBER_KEY_SQL = """
SELECT pg_try_advisory_xact_lock(
           hashtextextended('member' || chr(31) || $1 || chr(31) || $2, 0)) AS locked,
       i.fingerprint, i.status_code, i.response
FROM (SELECT 1) AS one
LEFT JOIN member_idempotency_keys AS i ON i.member_id = $1 AND i.key = $2
"""


async def claim_member_key(
    conn: Connection, member_id: str, key: str
) -> tuple[bool, StoredResponse | None]:
    """(locked, stored response) for a member's Idempotency-Key."""
    row = await conn.fetchrow(_CLAIM_MEMBER_KEY_SQL, member_id, key)
    if row is None or not row["locked"]:
        return False, None
    if row["fingerprint"] is None:
        return True, None
    return True, StoredResponse(
        bytes(row["fingerprint"]), row["status_code"], bytes(row["response"])
    )


_SAVE_MEMBER_KEY_SQL = """
INSERT INTO member_idempotency_keys (member_id, key, fingerprint, status_code, response,
                                     posting_id, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def save_member_key(
    conn: Connection,
    member_id: str,
    *,
    key: str,
    stored: StoredResponse,
    posting_id: uuid.UUID | None,
    at: datetime,
) -> None:
    await conn.execute(
        _SAVE_MEMBER_KEY_SQL,
        member_id,
        key,
        stored.fingerprint,
        stored.status_code,
        stored.response,
        posting_id,
        at,
    )
