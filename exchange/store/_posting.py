"""The posting path's SQL, on the pooled connection's asyncpg driver.

This is the exchange's hot path, so it talks to asyncpg directly (prepared statements
cached per connection, no per-statement ORM work) and keeps round trips few and fixed
per batch, whatever the batch size:

    nonces       the signatures' (keyid, nonce) pairs, if any          0-1, only if signed
    claim        barrier + idempotency try-locks + stored responses   1 statement
    resolve      which member a hold or an original belongs to        1, only if needed
    lock         member rows in member_id order, partners' terms      1
    limited      credit-limited partners: lock, then exposure         2, only if any
    originals    transactions being reversed                          1-3, only if needed
    books        lots, holds with their reserved lots, closed_until   1 (`ledger_books`)
    write        every insert and update of the batch                 1 (data-modifying CTE)

When no request needs resolving (earns, burns, new holds: each names its member), the
nonces, the claim, the lock and the books are one statement (`claim_and_lock`): four
round trips for a signed batch with BEGIN and COMMIT. The books query is the function
`ledger_books` (migration 0015), whose VOLATILE snapshot is taken after the locks
(docs/ledger.md).

Lock order (every writer follows it, so writers never deadlock on each other): nonces
sorted (an insert waits only for another batch inserting the same pair) and the
settlement barrier (shared), in either order (`claim_and_lock` enters the barrier
first). Shared holders of the barrier never block each other; only a settlement's
exclusive request queued between a nonce's two inserters could close a cycle, and
PostgreSQL's deadlock check resolves such a queue by reordering it, failing no one.
Then idempotency keys (try-locks, never wait); member rows sorted; credit-limited
partner rows sorted; counter shards upserted sorted.

The claim step is `_keys.claim_keys` (the same function every idempotent operation uses,
whose SELECT `claim_and_lock` embeds);
the write step's statement is in `_write`; `_reads` holds the reads off the write path
(a member's book for a balance, members with something due).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import msgspec

from exchange.errors import InvariantViolation
from exchange.ledger import (
    Hold,
    HoldStatus,
    Lot,
    MemberBook,
    OriginalPosting,
    PartnerTerms,
    PostingType,
)
from exchange.store._connection import Connection
from exchange.store._keys import BARRIER_CTE, PARTNER_KEYS
from exchange.store._nonces import spend_nonces_sql
from exchange.store._records import SETTLEMENT_BARRIER_KEY, StoredResponse
from exchange.store._rows import LotRow

__all__ = [
    "Books",
    "ClaimedAndLocked",
    "Locked",
    "TermsRow",
    "claim_and_lock",
    "claim_nonces",
    "load_books",
    "load_originals",
    "lock_credit_limited",
    "lock_members",
    "resolve_targets",
]

# -- nonces: one use per (keyid, nonce), in the posting's own database transaction -------------

_NONCES_SQL = spend_nonces_sql(1)


async def claim_nonces(
    conn: Connection, claims: Sequence[tuple[str, str, datetime]]
) -> set[tuple[str, str]]:
    """Insert distinct (key_id, nonce, seen_at) claims; return the pairs that were new."""
    if not claims:
        return set()
    rows = await conn.fetch(
        _NONCES_SQL,
        [key_id for key_id, _, _ in claims],
        [nonce for _, nonce, _ in claims],
        [seen_at.isoformat() for _, _, seen_at in claims],  # text: see store._nonces
    )
    return {(row["key_id"], row["nonce"]) for row in rows}


# -- resolve: what a capture, void or reversal is about ---------------------------------------

_RESOLVE_SQL = """
SELECT 'hold' AS kind, hold_id AS id, member_id, partner_id, NULL::text AS type
FROM holds WHERE hold_id = ANY($1::uuid[])
UNION ALL
SELECT 'posting', posting_id, member_id, partner_id, type
FROM postings WHERE posting_id = ANY($2::uuid[])
"""


async def resolve_targets(
    conn: Connection, hold_ids: Sequence[uuid.UUID], posting_ids: Sequence[uuid.UUID]
) -> tuple[dict[uuid.UUID, tuple[str, str]], dict[uuid.UUID, tuple[str, str | None, str]]]:
    """hold_id -> (member, partner); posting_id -> (member, partner, type). Unlocked: only
    to learn which members to lock (holds and postings never change owner)."""
    holds: dict[uuid.UUID, tuple[str, str]] = {}
    postings: dict[uuid.UUID, tuple[str, str | None, str]] = {}
    if not hold_ids and not posting_ids:
        return holds, postings
    for row in await conn.fetch(_RESOLVE_SQL, list(set(hold_ids)), list(set(posting_ids))):
        if row["kind"] == "hold":
            holds[row["id"]] = (row["member_id"], row["partner_id"])
        else:
            postings[row["id"]] = (row["member_id"], row["partner_id"], row["type"])
    return holds, postings


# -- lock (with the partners' terms) ----------------------------------------------------------

# One round trip: the member rows locked in member_id order (the CTE produces, and so
# locks, them in that order) and the partners' terms, as one row of JSON documents. The
# terms are the ones in force now (read unlocked: the posting keeps the version it was
# priced with); credit-limited partners are locked and re-read afterwards
# (`lock_credit_limited`). The journal's closing time is read with the books
# (`ledger_books`), with a snapshot taken after every lock is held (see there).
_TERMS_ROW = """json_build_array(
       partner_id, status, settlement_currency, issue_price::text, redemption_value::text,
       earn_rates, credit_limit::text, settled_issuance::text, receivable_open::text,
       terms_version, tier_multipliers)"""


def _lock_sql(members: int, erased: str, partners: int, *, after: str = "") -> str:
    """The lock statement's CTE `locked` and its one row, with the members, the erased
    flag and the partners in the given parameters; `after` is a FROM item the locks must
    wait for (the claims of `_CLAIM_AND_LOCK_SQL`)."""
    return f"""
locked AS MATERIALIZED (
    SELECT m.member_id, m.debt
    FROM {after}unnest_small(${members}::text[]) AS asked(member_id)
    JOIN members AS m ON m.member_id = asked.member_id
    WHERE m.status = 'active' OR {erased}
    ORDER BY m.member_id
    FOR NO KEY UPDATE OF m)
SELECT (SELECT coalesce(json_agg(json_build_array(member_id, debt)), '[]') FROM locked)::text
           AS members,
       (SELECT coalesce(json_agg({_TERMS_ROW}), '[]')
        FROM unnest_small(${partners}::text[]) AS asked(partner_id) JOIN partners USING (partner_id)
       )::text AS terms"""  # noqa: S608 - built from constant text, never from input


_LOCK_SQL = "WITH " + _lock_sql(1, "$2::boolean", 3)


class TermsRow(msgspec.Struct, array_like=True, frozen=True):
    """A partner's terms as `_TERMS_ROW` sends them."""

    partner_id: str
    status: str
    settlement_currency: str
    issue_price: Decimal
    redemption_value: Decimal
    earn_rates: dict[str, Decimal]
    credit_limit: Decimal | None
    settled_issuance: Decimal
    receivable_open: Decimal
    terms_version: int
    tier_multipliers: dict[str, Decimal]

    def terms(self, exposure: Decimal = Decimal(0)) -> PartnerTerms:
        return PartnerTerms(
            partner_id=self.partner_id,
            active=self.status == "active",
            settlement_currency=self.settlement_currency,
            issue_price=self.issue_price,
            redemption_value=self.redemption_value,
            earn_rates=self.earn_rates,
            credit_limit=self.credit_limit,
            exposure=exposure,
            # Kept on each posting: a price change committing while this batch runs is
            # visible afterwards as the version the posting was really priced with.
            version=self.terms_version,
            terminated=self.status == "terminated",
            tier_multipliers=self.tier_multipliers,
        )


_MEMBER_ROWS = msgspec.json.Decoder(list[tuple[str, int]])
_TERMS_ROWS = msgspec.json.Decoder(list[TermsRow])
_TERMS_ONE = msgspec.json.Decoder(TermsRow)


@dataclass(frozen=True, slots=True)
class Locked:
    """What `lock_members` holds and read: the locked members' debts and the terms of the
    partners asked for (credit-limited ones not yet locked: see `lock_credit_limited`)."""

    debts: dict[str, int]
    terms: dict[str, PartnerTerms]

    @classmethod
    def of(cls, members: str, terms: str) -> Locked:
        """From the lock statement's two JSON documents."""
        return cls(
            dict(_MEMBER_ROWS.decode(members)),
            {found.partner_id: found.terms() for found in _TERMS_ROWS.decode(terms)},
        )


async def lock_members(
    conn: Connection,
    member_ids: Iterable[str],
    *,
    partner_ids: Iterable[str] = (),
    include_erased: bool = False,
) -> Locked:
    """Lock member rows in member_id order; their debts and the terms of `partner_ids`,
    in one round trip. Erased members are left out (not found), except for the sweep
    (`include_erased`): their points still expire on time."""
    row = await conn.fetchrow(
        _LOCK_SQL, sorted(set(member_ids)), include_erased, sorted(set(partner_ids))
    )
    if row is None:  # a SELECT without FROM returns one row
        raise InvariantViolation("the lock statement returned no row")
    return Locked.of(row["members"], row["terms"])


# -- claim, lock and books: one round trip when every member is known up front ---------------

# The partners' claim (`_keys`: settlement barrier, try-locked keys, stored responses), the
# member locks in lock order (the locks wait for the claims: `after`), and the locked
# members' books. For a batch whose requests all name their member (no capture, void or
# reversal to resolve first). The books come from `ledger_books`, which takes its own
# snapshot: its argument, the locked members, is a subquery over the materialized locking
# CTE, so the function runs once every lock is held and sees what their previous holders
# committed (this statement's own snapshot predates its waits for the barrier and the
# locks). Members of requests that turn out to be replays, or whose key another
# transaction holds (409), are locked and read too, for this transaction only; nothing is
# written for them. The price: such a batch waits for that other transaction's member lock
# (in member order, as every writer locks: no deadlock), where the separate lock statement
# skipped them.
#
# The signed requests' nonces ($7-$9) are spent first, by the statement's `spent` CTE, and
# a claim is try-locked only if its request's nonce ($10, aligned with the claims; NULL for
# a request without one) was spent there: a replay is refused before its key is claimed,
# as when the nonces had a statement of their own (migration 0024). The pairs spent come
# back in `spent`, as `key_id || chr(31) || nonce` (neither contains a control character:
# both are Structured Field strings, printable ASCII).
_CLAIM_AND_LOCK_SQL = f"""
WITH spent AS ({spend_nonces_sql(7)}),
{BARRIER_CTE},
claims AS MATERIALIZED ({PARTNER_KEYS.claimed_sql(spent=("spent", 10))}),
{_lock_sql(4, "false", 5, after="(SELECT count(*) FROM claims) AS claimed, ")},
(SELECT coalesce(json_agg(json_build_array(
            owner, key, locked, translate(encode(fingerprint, 'base64'), E'\\n', ''),
            status_code, translate(encode(response, 'base64'), E'\\n', ''))), '[]')
        FROM claims)::text AS claims,
       (SELECT array_agg(s.key_id || chr(31) || s.nonce) FROM spent AS s) AS spent,
       books.closed_until, books.lots, books.holds, books.unloaded
FROM ledger_books((SELECT coalesce(array_agg(member_id ORDER BY member_id), '{{}}') FROM locked),
                  '{{}}', '{{}}', $6::timestamptz) AS books
"""  # noqa: S608 - built from constant text, never from input


class _ClaimRow(msgspec.Struct, array_like=True, frozen=True):
    owner: str
    key: str
    locked: bool
    fingerprint: bytes | None
    status_code: int | None
    response: bytes | None


_CLAIM_ROWS = msgspec.json.Decoder(list[_ClaimRow])


class ClaimedAndLocked(NamedTuple):
    """What `claim_and_lock` read: the nonces it spent, the claims it locked and the
    responses stored under them, the locks, and the books."""

    spent: set[tuple[str, str]]
    locked: set[tuple[str, str]]
    stored: dict[tuple[str, str], StoredResponse]
    lock_read: Locked
    books: Books


async def claim_and_lock(
    conn: Connection,
    claims: Sequence[tuple[str, str, tuple[str, str] | None]],
    member_ids: Iterable[str],
    partner_ids: Iterable[str],
    *,
    nonces: Sequence[tuple[str, str, datetime]] = (),
    due_by: datetime | None = None,
) -> ClaimedAndLocked:
    """`claim_nonces` (the distinct `nonces`), `_keys.claim_keys` (partners' keys, with
    the barrier; each claim is (owner, key, its request's nonce or None), and a claim
    whose nonce was not spent is not locked), `lock_members` (active members) and
    `load_books` (of every member locked) in one round trip; what each returns. With
    `due_by`, the books are partial (`MemberBook.unloaded`, migration 0021): good for
    earns applied at `due_by` or before, and for nothing else."""
    row = await conn.fetchrow(
        _CLAIM_AND_LOCK_SQL,
        [owner for owner, _, _ in claims],
        [key for _, key, _ in claims],
        SETTLEMENT_BARRIER_KEY,
        sorted(set(member_ids)),
        sorted(set(partner_ids)),
        due_by,
        [key_id for key_id, _, _ in nonces],
        [nonce for _, nonce, _ in nonces],
        [seen_at.isoformat() for _, _, seen_at in nonces],  # text: see store._nonces
        [None if nonce is None else f"{nonce[0]}\x1f{nonce[1]}" for _, _, nonce in claims],
    )
    if row is None:  # one row per call of `ledger_books`: exactly one
        raise InvariantViolation("the claim-and-lock statement returned no row")
    found = _CLAIM_ROWS.decode(row["claims"])
    locked = {(claim.owner, claim.key) for claim in found if claim.locked}
    stored = {
        (claim.owner, claim.key): StoredResponse(
            claim.fingerprint, claim.status_code or 0, claim.response or b""
        )
        for claim in found
        if claim.locked and claim.fingerprint is not None
    }
    fetched = Locked.of(row["members"], row["terms"])
    books = _books_of(
        fetched.debts, row["closed_until"], row["lots"], row["holds"], row["unloaded"]
    )
    spent = {_nonce_pair(pair) for pair in row["spent"] or ()}
    return ClaimedAndLocked(spent, locked, stored, fetched, books)


def _nonce_pair(joined: str) -> tuple[str, str]:
    key_id, _, nonce = joined.partition("\x1f")
    return key_id, nonce


# -- credit-limited partners -------------------------------------------------------------------

# Lock, then read the exposure in a LATER statement, so that it includes everything
# committed by whoever held the lock before us.
_LOCK_LIMITED_SQL = f"""
SELECT {_TERMS_ROW}::text AS terms FROM partners WHERE partner_id = ANY($1::text[])
ORDER BY partner_id FOR NO KEY UPDATE
"""  # noqa: S608 - built from constant text, never from input
_EXPOSURE_SQL = """
SELECT partner_id, coalesce(sum(issued_value), 0) AS issued
FROM partner_counters WHERE partner_id = ANY($1::text[]) GROUP BY partner_id
"""


async def lock_credit_limited(
    conn: Connection, terms: dict[str, PartnerTerms]
) -> dict[str, PartnerTerms]:
    """`terms` with each credit-limited partner locked (in partner_id order), its terms
    read again under the lock and its exposure added; nothing to do (no round trip)
    when none has a limit."""
    limited = sorted(partner_id for partner_id, t in terms.items() if t.credit_limit is not None)
    if not limited:
        return terms
    rows = [_TERMS_ONE.decode(row["terms"]) for row in await conn.fetch(_LOCK_LIMITED_SQL, limited)]
    issued = {row["partner_id"]: row["issued"] for row in await conn.fetch(_EXPOSURE_SQL, limited)}
    # Unsettled issuance of the open period, plus what closed runs billed and the partner
    # has not paid yet (contract §8: headroom returns when it pays).
    return terms | {
        row.partner_id: row.terms(
            issued.get(row.partner_id, Decimal(0)) - row.settled_issuance + row.receivable_open
        )
        for row in rows
    }


# -- books -----------------------------------------------------------------------------------

# A book's lots are read back as the rows the store writes (`_rows.LotRow`, the table's
# columns in order). A member's balance (`_reads`) builds its query from these columns, so
# it cannot miss one. The posting path's books query is the function `ledger_books`
# (migration 0015), so that the claim-and-lock statement can run it with a snapshot taken
# after its locks; it lists the same columns in the same order and its holds as
# `HOLD_JSON`, and a column added to `LotRow` without a new version of the function fails
# every decode of a book (too short an array). Three index-friendly parts: the members' open
# lots, named lots (a reversal's), and the lots reserved by the members' open holds or by
# named holds, as one JSON document (decoded by msgspec, several times cheaper than rows
# field by field), the arrays through `unnest_small` so that its plan is kept
# (docs/performance.md, "Plans").
LOT_COLUMNS = ", ".join(LotRow.__struct_fields__)
LOT_COLUMNS_OF_L = ", ".join("l." + name for name in LotRow.__struct_fields__)  # lots AS l
HOLD_JSON = """json_build_array(
       h.hold_id, h.member_id, h.partner_id, h.points, h.status, h.created_at, h.expires_at,
       h.reference, h.captured_points, h.transaction_id, h.closed_at,
       (SELECT json_agg(json_build_array(a.lot_id, a.points)
                        ORDER BY l.expires_at, l.created_at, l.lot_id)
        FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
        WHERE a.posting_id = h.hold_posting_id AND a.kind = 'draw'))"""
_BOOKS_SQL = (
    "SELECT closed_until, lots, holds FROM ledger_books($1::text[], $2::uuid[], $3::uuid[], NULL)"
)
# What a partial book left out (migration 0021): its points, and their sums on their
# soonest expiry dates (None: nothing left out). `ledger_books` gives one per member, a
# balance read one per row (`_reads.book_columns`).
LeftOut = tuple[int, list[tuple[datetime, int]] | None]
_LEFT_OUT_BY_MEMBER = msgspec.json.Decoder(dict[str, LeftOut])


def leave_out(book: MemberBook, left_out: LeftOut) -> None:
    """Record on `book` the points its partial read left out."""
    points, soonest = left_out
    book.unloaded = points
    book.unloaded_expiring = dict(soonest or ())


_LOT_ROWS = msgspec.json.Decoder(list[LotRow])


def lots_of(document: str) -> list[Lot]:
    return [
        Lot(
            row.lot_id,
            row.member_id,
            row.issuer_id,
            row.earn_id,
            row.initial,
            row.remaining,
            row.unit_price,
            row.available_at,
            row.expires_at,
            row.matured,
            row.created_at,
            row.source_lot_id,
        )
        for row in _LOT_ROWS.decode(document)
    ]


class _HoldRow(msgspec.Struct, array_like=True):
    hold_id: uuid.UUID
    member_id: str
    partner_id: str
    points: int
    status: str
    created_at: datetime
    expires_at: datetime
    reference: str | None
    captured_points: int | None
    transaction_id: uuid.UUID | None
    closed_at: datetime | None
    draws: list[tuple[uuid.UUID, int]] | None


_HOLD_ROWS = msgspec.json.Decoder(list[_HoldRow])


def holds_of(document: str) -> list[Hold]:
    return [
        Hold(
            hold_id=row.hold_id,
            member_id=row.member_id,
            partner_id=row.partner_id,
            points=row.points,
            status=HoldStatus(row.status),
            created_at=row.created_at,
            expires_at=row.expires_at,
            reference=row.reference,
            draws=list(row.draws or ()),
            captured_points=row.captured_points,
            transaction_id=row.transaction_id,
            closed_at=row.closed_at,
        )
        for row in _HOLD_ROWS.decode(document)
    ]


class Books(NamedTuple):
    books: dict[str, MemberBook]  # by member_id
    # The end of the last closed settlement period, read after the caller's locks: it moves
    # only under the settlement barrier (exclusive), which every posting transaction holds
    # (shared) before it loads its books, so it stays right until the transaction commits.
    closed_until: datetime


async def load_books(
    conn: Connection,
    debts: dict[str, int],
    *,
    hold_ids: Iterable[uuid.UUID] = (),
    lot_ids: Iterable[uuid.UUID] = (),
) -> Books:
    """Each member's open lots and open holds (with the lots they reserved), plus the named
    holds and lots a request needs, and the journal's closing time. Call with the
    settlement barrier and the members locked."""
    row = await conn.fetchrow(_BOOKS_SQL, sorted(debts), list(set(lot_ids)), list(set(hold_ids)))
    if row is None:  # an aggregate over the locked members: always exactly one row
        raise InvariantViolation("the books query returned no row")
    return _books_of(debts, row["closed_until"], row["lots"], row["holds"])


def _books_of(
    debts: dict[str, int], closed_until: datetime, lots: str, holds: str, unloaded: str = "{}"
) -> Books:
    """The books of the members in `debts`, from `ledger_books`' row (lots and holds of
    other members are left out); `unloaded`: the points a partial book left out, by
    member."""
    books = {
        member_id: MemberBook(member_id=member_id, debt=debt) for member_id, debt in debts.items()
    }
    for member_id, left_out in _LEFT_OUT_BY_MEMBER.decode(unloaded).items():
        book = books.get(member_id)
        if book is not None:
            leave_out(book, left_out)
    for lot in lots_of(lots):
        book = books.get(lot.member_id)
        if book is not None:
            book.lots[lot.lot_id] = lot
    for hold in holds_of(holds):
        book = books.get(hold.member_id)
        if book is not None:
            book.holds[hold.hold_id] = hold
    return Books(books, closed_until)


# -- originals (reversals) -------------------------------------------------------------------

_ORIGINALS_SQL = """
SELECT o.posting_id, o.type, o.partner_id, o.member_id, o.points, o.unit_price, o.currency,
       (SELECT coalesce(sum(r.points), 0) FROM postings AS r WHERE r.reverses = o.posting_id)
           AS reversed_points,
       (SELECT l.lot_id FROM lots AS l WHERE l.earn_id = o.posting_id) AS lot_id
FROM postings AS o WHERE o.posting_id = ANY($1::uuid[])
"""
_BURN_DRAWS_SQL = """
SELECT a.posting_id, a.lot_id, a.points
FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
WHERE a.posting_id = ANY($1::uuid[]) AND a.kind = 'draw'
ORDER BY a.posting_id, l.expires_at, l.created_at, l.lot_id
"""
_RESTORED_SQL = """
SELECT r.reverses, a.lot_id, sum(a.points) AS points
FROM postings AS r JOIN allocations AS a ON a.posting_id = r.posting_id
WHERE r.reverses = ANY($1::uuid[]) AND a.kind = 'release'
GROUP BY r.reverses, a.lot_id
"""


async def load_originals(
    conn: Connection, posting_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, OriginalPosting]:
    """Transactions to reverse, with what earlier reversals took back. Read under the
    member's lock, so no other reversal of the same transaction can be in flight."""
    ids = sorted(set(posting_ids))
    if not ids:
        return {}
    rows = await conn.fetch(_ORIGINALS_SQL, ids)
    burns = [row["posting_id"] for row in rows if row["type"] == PostingType.BURN.value]
    draws: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = defaultdict(list)
    restored: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
    if burns:
        for row in await conn.fetch(_BURN_DRAWS_SQL, burns):
            draws[row["posting_id"]].append((row["lot_id"], row["points"]))
        for row in await conn.fetch(_RESTORED_SQL, burns):
            restored[row["reverses"]][row["lot_id"]] = int(row["points"])
    return {
        row["posting_id"]: OriginalPosting(
            posting_id=row["posting_id"],
            type=PostingType(row["type"]),
            partner_id=row["partner_id"],
            member_id=row["member_id"],
            points=row["points"],
            unit_price=row["unit_price"],
            currency=row["currency"],
            reversed_points=int(row["reversed_points"]),
            lot_id=row["lot_id"],
            draws=tuple(draws[row["posting_id"]]),
            restored=restored[row["posting_id"]],
        )
        for row in rows
    }
