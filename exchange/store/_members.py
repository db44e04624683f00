"""Members SQL on the asyncpg driver: qualifying points (tiers), a balance read with the
tier in the same statement, and what a transfer needs besides the posting path's steps
(the 30-day total). Member-scoped idempotency keys are `_keys.claim_keys` and
`_keys.remember` with `scope=MEMBER_KEYS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeAlias

from exchange.ledger import MemberBook, PostingType
from exchange.store._connection import Connection
from exchange.store._nonces import NOT_DURABLE, spend_nonces_sql
from exchange.store._reads import book_columns, book_of

__all__ = [
    "BalanceKey",
    "qualifying_points",
    "read_books_with_qualifying",
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


async def qualifying_points(
    conn: Connection, member_ids: Iterable[str], since: datetime
) -> dict[str, int]:
    """Each member's qualifying points: earned after `since`, net of their reversals."""
    rows = await conn.fetch(_QUALIFYING_SQL, sorted(set(member_ids)), since)
    return {row["member_id"]: int(row["points"]) for row in rows}


# Balance reads of many members at once (coalesced requests, `exchange.coalesce`): each
# (member, asking partner) pair's book as `_reads` reads it, and its qualifying points,
# in one statement (one round trip, one snapshot). A pair whose member is unknown,
# erased, or not linked to the asking partner (NULL: the member's own token) has no row.
#
# The same statement spends the signed reads' nonces ($5-$7) without waiting for the
# flush to disk, as the gateway's writer of reads' nonces does (`_nonces`), and the pairs
# it stored come back in `spent`. The books are joined to one row that always exists, so
# `spent` comes back even when no member has a book.
_READ_BALANCES_SQL = f"""
WITH {NOT_DURABLE},
spent AS ({spend_nonces_sql(5, not_durable=True)})
SELECT (SELECT array_agg(s.key_id ORDER BY s.key_id, s.nonce) FROM spent AS s) AS spent_keys,
       (SELECT array_agg(s.nonce ORDER BY s.key_id, s.nonce) FROM spent AS s) AS spent_nonces,
       b.*
FROM (SELECT) AS one
LEFT JOIN LATERAL (
    SELECT r.first AS member_id, r.second AS linked_to, {book_columns("$4")},
           {_QUALIFYING_EXPR.format(member="m.member_id", since="$3")} AS qualifying
    FROM unnest_small($1::text[], $2::text[]) AS r
    JOIN members AS m ON m.member_id = r.first
    WHERE m.status = 'active'
      AND (r.second IS NULL OR EXISTS (
          SELECT 1 FROM member_links AS k
          WHERE k.member_id = m.member_id AND k.partner_id = r.second))
) AS b ON true
"""  # noqa: S608 - built from constants

BalanceKey: TypeAlias = tuple[str, str | None]  # (member id, the asking partner or None)


async def read_books_with_qualifying(
    conn: Connection,
    keys: Sequence[BalanceKey],
    *,
    since: datetime,
    due_by: datetime | None,
    nonces: Sequence[tuple[str, str, datetime]] = (),
) -> tuple[dict[BalanceKey, tuple[MemberBook, datetime, int]], set[tuple[str, str]]]:
    """Each key's book, `closed_until` and qualifying points since `since`, from one
    statement; a key with nothing to read (see `_READ_BALANCES_SQL`) is absent. With
    `due_by`, partial books, good for balances at `due_by` or before. The same statement
    stores the distinct (key id, nonce, seen at) `nonces`, not durably; the pairs it
    stored come back second (a pair not among them was already spent)."""
    rows = await conn.fetch(
        _READ_BALANCES_SQL,
        [key[0] for key in keys],
        [key[1] for key in keys],
        since,
        due_by,
        [key_id for key_id, _, _ in nonces],
        [nonce for _, nonce, _ in nonces],
        [at.isoformat() for _, _, at in nonces],
    )
    spent = set(zip(rows[0]["spent_keys"] or (), rows[0]["spent_nonces"] or (), strict=True))
    books = {
        (row["member_id"], row["linked_to"]): (
            book_of(row["member_id"], row),
            row["closed_until"],
            int(row["qualifying"]),
        )
        for row in rows
        if row["member_id"] is not None
    }
    return books, spent


_TRANSFERRED_SQL = f"""
SELECT coalesce(sum(points), 0)::bigint FROM postings
WHERE member_id = $1 AND type = '{PostingType.TRANSFER_OUT}' AND posted_at > $2
"""  # noqa: S608 - a constant


async def transferred_since(conn: Connection, member_id: str, since: datetime) -> int:
    """Points the member transferred out after `since` (call with the member locked)."""
    return int(await conn.fetchval(_TRANSFERRED_SQL, member_id, since))
