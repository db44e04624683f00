"""The posting path's SQL, on the pooled connection's asyncpg driver.

This is the exchange's hot path, so it talks to asyncpg directly (prepared statements
cached per connection, no per-statement ORM work) and keeps round trips few and fixed
per batch, whatever the batch size:

    claim        barrier + idempotency try-locks + stored responses   1 statement
    resolve      which member a hold or an original belongs to        1, only if needed
    lock         member rows in member_id order + closed_until        1
    partners     terms (+ lock and exposure for credit-limited ones)  1 (3)
    books        lots, then holds with their reserved lots            2
    originals    transactions being reversed                          1-3, only if needed
    write        every insert and update of the batch                 1 (data-modifying CTE)

Lock order (every writer follows it, so writers never deadlock on each other): the
settlement barrier (shared); idempotency keys (try-locks, never wait); member rows
sorted; credit-limited partner rows sorted; counter shards upserted sorted.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from exchange.ledger import (
    Balance,
    Hold,
    HoldStatus,
    Lot,
    MemberBook,
    OriginalPosting,
    PartnerTerms,
    Posting,
    PostingType,
)
from exchange.store._records import (
    COUNTER_SHARDS,
    SETTLEMENT_BARRIER_KEY,
    IdempotencyRecord,
    SignatureRecord,
    StoredResponse,
)

__all__ = [
    "BatchWrite",
    "claim_keys",
    "due_member_ids",
    "load_books",
    "load_originals",
    "load_partner_terms",
    "lock_members",
    "read_book",
    "resolve_targets",
    "write_batch",
]

Connection = asyncpg.Connection


# -- claim: barrier + idempotency ------------------------------------------------------------

_BARRIER_SQL = "SELECT pg_advisory_xact_lock_shared($1::bigint)"

# The barrier CTE runs once, before any row is produced. A key committed by another
# transaction between this statement's snapshot and its try-lock is missed here, but its
# primary key makes our insert fail later, and the retry then sees and replays it.
_CLAIM_SQL = """
WITH barrier AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1::bigint) AS held)
SELECT c.partner_id, c.key,
       pg_try_advisory_xact_lock(hashtextextended(c.partner_id || chr(31) || c.key, 0)) AS locked,
       i.fingerprint, i.status_code, i.response
FROM barrier
CROSS JOIN unnest($2::text[], $3::text[]) AS c(partner_id, key)
LEFT JOIN idempotency_keys AS i ON i.partner_id = c.partner_id AND i.key = c.key
"""


async def claim_keys(
    conn: Connection, claims: Sequence[tuple[str, str]]
) -> tuple[set[tuple[str, str]], dict[tuple[str, str], StoredResponse]]:
    """Enter the settlement barrier; try-lock each (partner, key) and read stored responses."""
    if not claims:
        await conn.execute(_BARRIER_SQL, SETTLEMENT_BARRIER_KEY)
        return set(), {}
    rows = await conn.fetch(
        _CLAIM_SQL,
        SETTLEMENT_BARRIER_KEY,
        [partner_id for partner_id, _ in claims],
        [key for _, key in claims],
    )
    locked = {(row["partner_id"], row["key"]) for row in rows if row["locked"]}
    stored = {
        (row["partner_id"], row["key"]): StoredResponse(
            bytes(row["fingerprint"]), row["status_code"], bytes(row["response"])
        )
        for row in rows
        if row["locked"] and row["fingerprint"] is not None
    }
    return locked, stored


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


# -- lock ------------------------------------------------------------------------------------

# closed_until is read here, after the barrier is held: it only moves under the exclusive
# barrier, so this value stays right until we commit.
_LOCK_SQL = """
SELECT m.member_id, m.debt, (SELECT closed_until FROM ledger_state WHERE id = 1) AS closed_until
FROM members AS m
WHERE m.member_id = ANY($1::text[])
ORDER BY m.member_id
FOR NO KEY UPDATE OF m
"""
_CLOSED_SQL = "SELECT closed_until FROM ledger_state WHERE id = 1"


async def lock_members(
    conn: Connection, member_ids: Iterable[str]
) -> tuple[dict[str, int], datetime]:
    """Lock member rows in member_id order; their debts, and the journal's closing time."""
    rows = await conn.fetch(_LOCK_SQL, sorted(set(member_ids)))
    debts = {row["member_id"]: row["debt"] for row in rows}
    closed_until = rows[0]["closed_until"] if rows else await conn.fetchval(_CLOSED_SQL)
    return debts, closed_until


# -- partners --------------------------------------------------------------------------------

_PARTNERS_SQL = """
SELECT partner_id, status, settlement_currency, issue_price, redemption_value,
       earn_rates::text AS earn_rates, credit_limit, settled_issuance
FROM partners WHERE partner_id = ANY($1::text[])
"""
# Credit-limited partners: lock, then read the exposure in a LATER statement, so that it
# includes everything committed by whoever held the lock before us.
_LOCK_LIMITED_SQL = _PARTNERS_SQL + " ORDER BY partner_id FOR NO KEY UPDATE"
_EXPOSURE_SQL = """
SELECT partner_id, coalesce(sum(issued_value), 0) AS issued
FROM partner_counters WHERE partner_id = ANY($1::text[]) GROUP BY partner_id
"""


def _terms(row: Any, exposure: Decimal) -> PartnerTerms:
    rates = msgspec.json.decode(row["earn_rates"], type=dict[str, str])
    return PartnerTerms(
        partner_id=row["partner_id"],
        active=row["status"] == "active",
        settlement_currency=row["settlement_currency"],
        issue_price=row["issue_price"],
        redemption_value=row["redemption_value"],
        earn_rates={currency: Decimal(rate) for currency, rate in rates.items()},
        credit_limit=row["credit_limit"],
        exposure=exposure,
    )


async def load_partner_terms(
    conn: Connection, partner_ids: Iterable[str]
) -> dict[str, PartnerTerms]:
    """The terms in force now; credit-limited partners locked, with their exposure."""
    ids = sorted(set(partner_ids))
    if not ids:
        return {}
    rows = {row["partner_id"]: row for row in await conn.fetch(_PARTNERS_SQL, ids)}
    limited = sorted(
        partner_id for partner_id, row in rows.items() if row["credit_limit"] is not None
    )
    exposures: dict[str, Decimal] = {}
    if limited:
        for row in await conn.fetch(_LOCK_LIMITED_SQL, limited):
            rows[row["partner_id"]] = row
        issued = {
            row["partner_id"]: row["issued"] for row in await conn.fetch(_EXPOSURE_SQL, limited)
        }
        exposures = {
            partner_id: issued.get(partner_id, Decimal(0)) - rows[partner_id]["settled_issuance"]
            for partner_id in limited
        }
    return {
        partner_id: _terms(row, exposures.get(partner_id, Decimal(0)))
        for partner_id, row in rows.items()
    }


# -- books -----------------------------------------------------------------------------------

_LOT_COLUMNS = (
    "lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price, available_at, "
    "expires_at, matured, created_at"
)
# Three index-friendly parts: the members' open lots, named lots (a reversal's), and
# the lots reserved by the members' open holds or by named holds. One JSON document
# decoded by msgspec is several times cheaper than decoding rows field by field.
_LOTS_SQL = f"""
SELECT coalesce(json_agg(json_build_array({_LOT_COLUMNS})), '[]')::text FROM (
    SELECT {_LOT_COLUMNS} FROM lots
    WHERE member_id = ANY($1::text[]) AND (remaining > 0 OR NOT matured)
    UNION ALL
    SELECT {_LOT_COLUMNS} FROM lots WHERE lot_id = ANY($2::uuid[])
    UNION ALL
    SELECT {", ".join("l." + c.strip() for c in _LOT_COLUMNS.split(","))}
    FROM holds AS h
    JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
    JOIN lots AS l ON l.lot_id = a.lot_id
    WHERE (h.member_id = ANY($1::text[]) AND h.status = 'open') OR h.hold_id = ANY($3::uuid[])
) AS book_lots
"""  # noqa: S608 - built from constant column lists, never from input
_HOLDS_SQL = """
SELECT h.hold_id, h.member_id, h.partner_id, h.points, h.status, h.created_at, h.expires_at,
       h.reference, h.captured_points, h.transaction_id, h.closed_at,
       array_agg(a.lot_id ORDER BY l.expires_at, l.created_at, l.lot_id) AS lot_ids,
       array_agg(a.points ORDER BY l.expires_at, l.created_at, l.lot_id) AS lot_points
FROM holds AS h
JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
JOIN lots AS l ON l.lot_id = a.lot_id
WHERE (h.member_id = ANY($1::text[]) AND h.status = 'open') OR h.hold_id = ANY($2::uuid[])
GROUP BY h.hold_id
"""


class _LotRow(msgspec.Struct, array_like=True):
    lot_id: uuid.UUID
    member_id: str
    issuer_id: str
    earn_id: uuid.UUID
    initial: int
    remaining: int
    unit_price: Decimal
    available_at: datetime
    expires_at: datetime
    matured: bool
    created_at: datetime


_LOT_ROWS = msgspec.json.Decoder(list[_LotRow])


def _lots(document: str) -> list[Lot]:
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
        )
        for row in _LOT_ROWS.decode(document)
    ]


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row["hold_id"],
        member_id=row["member_id"],
        partner_id=row["partner_id"],
        points=row["points"],
        status=HoldStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        reference=row["reference"],
        draws=list(zip(row["lot_ids"], row["lot_points"], strict=True)),
        captured_points=row["captured_points"],
        transaction_id=row["transaction_id"],
        closed_at=row["closed_at"],
    )


async def load_books(
    conn: Connection,
    debts: dict[str, int],
    *,
    hold_ids: Iterable[uuid.UUID] = (),
    lot_ids: Iterable[uuid.UUID] = (),
) -> dict[str, MemberBook]:
    """Each member's open lots and open holds (with the lots they reserved), plus the named
    holds and lots a request needs. Call with the members locked."""
    books = {
        member_id: MemberBook(member_id=member_id, debt=debt) for member_id, debt in debts.items()
    }
    if not books:
        return books
    member_ids = sorted(books)
    holds = list(set(hold_ids))
    document = await conn.fetchval(_LOTS_SQL, member_ids, list(set(lot_ids)), holds)
    for lot in _lots(document):
        book = books.get(lot.member_id)
        if book is not None:
            book.lots[lot.lot_id] = lot
    for row in await conn.fetch(_HOLDS_SQL, member_ids, holds):
        book = books.get(row["member_id"])
        if book is not None:
            book.holds[row["hold_id"]] = _hold(row)
    return books


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


# -- write -----------------------------------------------------------------------------------

# Every insert and update of a batch in ONE statement. Sub-statements of a WITH run on
# one snapshot and cannot see each other's rows, so new lots are inserted in their final
# state and only existing lots are updated; foreign keys and the statement-level guards
# (balanced postings, closed periods) are checked when the whole statement ends.
_WRITE_SQL = """
WITH
new_postings AS (
    INSERT INTO postings (posting_id, type, member_id, partner_id, points, reference, reverses,
                          hold_id, unit_price, currency, posted_at, available_at, expires_at,
                          available_after, held_after, pending_after)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::uuid[], $8::uuid[], $9::numeric[], $10::text[],
                         $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
                         $14::bigint[], $15::bigint[], $16::bigint[])),
new_entries AS (
    INSERT INTO entries (posting_id, line, account, owner, amount, posted_at)
    SELECT * FROM unnest($17::uuid[], $18::smallint[], $19::text[], $20::text[], $21::bigint[],
                         $22::timestamptz[])),
new_lots AS (
    INSERT INTO lots (lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,
                      available_at, expires_at, matured, created_at)
    SELECT * FROM unnest($23::uuid[], $24::text[], $25::text[], $26::uuid[], $27::bigint[],
                         $28::bigint[], $29::numeric[], $30::timestamptz[], $31::timestamptz[],
                         $32::boolean[], $33::timestamptz[])),
new_allocations AS (
    INSERT INTO allocations (posting_id, lot_id, kind, points)
    SELECT * FROM unnest($34::uuid[], $35::uuid[], $36::text[], $37::bigint[])),
new_holds AS (
    INSERT INTO holds (hold_id, member_id, partner_id, points, status, reference,
                       hold_posting_id, created_at, expires_at)
    SELECT * FROM unnest($38::uuid[], $39::text[], $40::text[], $41::bigint[], $42::text[],
                         $43::text[], $44::uuid[], $45::timestamptz[], $46::timestamptz[])),
changed_lots AS (
    UPDATE lots SET remaining = v.remaining, matured = v.matured
    FROM unnest($47::uuid[], $48::bigint[], $49::boolean[]) AS v(lot_id, remaining, matured)
    WHERE lots.lot_id = v.lot_id),
changed_holds AS (
    UPDATE holds SET status = v.status, transaction_id = v.transaction_id,
                     captured_points = v.captured_points, closed_at = v.closed_at
    FROM unnest($50::uuid[], $51::text[], $52::uuid[], $53::bigint[], $54::timestamptz[])
         AS v(hold_id, status, transaction_id, captured_points, closed_at)
    WHERE holds.hold_id = v.hold_id),
changed_debts AS (
    UPDATE members SET debt = v.debt
    FROM unnest($55::text[], $56::bigint[]) AS v(member_id, debt)
    WHERE members.member_id = v.member_id),
counters AS (
    INSERT INTO partner_counters (partner_id, shard, issued_value, liability_points,
                                  liability_value)
    SELECT v.partner_id, (pg_backend_pid() % $58::int)::smallint, v.issued, v.points, v.value
    FROM unnest($57::text[], $59::numeric[], $60::bigint[], $61::numeric[])
         AS v(partner_id, issued, points, value)
    ON CONFLICT (partner_id, shard) DO UPDATE SET
        issued_value = partner_counters.issued_value + excluded.issued_value,
        liability_points = partner_counters.liability_points + excluded.liability_points,
        liability_value = partner_counters.liability_value + excluded.liability_value),
links AS (
    INSERT INTO member_links (member_id, partner_id)
    SELECT * FROM unnest($62::text[], $63::text[])
    ON CONFLICT DO NOTHING),
signatures AS (
    INSERT INTO posting_signatures (posting_id, key_id, signature_input, signature,
                                    content_digest, signature_base)
    SELECT * FROM unnest($64::uuid[], $65::text[], $66::text[], $67::text[], $68::text[],
                         $69::bytea[])),
keys AS (
    INSERT INTO idempotency_keys (partner_id, key, fingerprint, status_code, response,
                                  posting_id)
    SELECT * FROM unnest($70::text[], $71::text[], $72::bytea[], $73::smallint[], $74::bytea[],
                         $75::uuid[]))
SELECT 1
"""


class _Columns:
    """Column arrays for one table of the write statement, filled row by row."""

    def __init__(self, width: int) -> None:
        self.columns: list[list[Any]] = [[] for _ in range(width)]

    def add(self, *values: Any) -> None:
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)


@dataclass
class BatchWrite:
    """Everything one batch writes, as column arrays for `_WRITE_SQL`."""

    postings: _Columns = field(default_factory=lambda: _Columns(16))
    entries: _Columns = field(default_factory=lambda: _Columns(6))
    new_lots: _Columns = field(default_factory=lambda: _Columns(11))
    allocations: _Columns = field(default_factory=lambda: _Columns(4))
    new_holds: _Columns = field(default_factory=lambda: _Columns(9))
    changed_lots: _Columns = field(default_factory=lambda: _Columns(3))
    changed_holds: _Columns = field(default_factory=lambda: _Columns(5))
    debts: _Columns = field(default_factory=lambda: _Columns(2))
    links: _Columns = field(default_factory=lambda: _Columns(2))
    signatures: _Columns = field(default_factory=lambda: _Columns(6))
    keys: _Columns = field(default_factory=lambda: _Columns(6))
    counters: dict[str, list[Any]] = field(
        default_factory=lambda: defaultdict(lambda: [Decimal(0), 0, Decimal(0)])
    )

    def add_books(self, books: Iterable[MemberBook], after: dict[uuid.UUID, Balance]) -> None:
        for book in books:
            self._add_book(book, after)

    def _add_book(self, book: MemberBook, after: dict[uuid.UUID, Balance]) -> None:
        touched: set[uuid.UUID] = set(book.matured_lots)
        hold_postings: dict[uuid.UUID, uuid.UUID] = {}
        for posting in book.postings:
            self._add_posting(book, posting, after.get(posting.posting_id))
            touched.update(allocation.lot_id for allocation in posting.allocations)
            if posting.type is PostingType.HOLD and posting.hold_id is not None:
                hold_postings[posting.hold_id] = posting.posting_id
        for lot_id in book.new_lots:
            lot = book.lots[lot_id]
            self.new_lots.add(
                lot.lot_id, lot.member_id, lot.issuer_id, lot.earn_id, lot.initial, lot.remaining,
                lot.unit_price, lot.available_at, lot.expires_at, lot.matured, lot.created_at,
            )  # fmt: skip
            counter = self.counters[lot.issuer_id]
            counter[1] += lot.initial
            counter[2] += lot.initial * lot.unit_price
        for lot_id in sorted(touched - book.new_lots):
            lot = book.lots[lot_id]
            self.changed_lots.add(lot_id, lot.remaining, lot.matured)
        for hold_id in book.new_holds:
            hold = book.holds[hold_id]
            self.new_holds.add(
                hold.hold_id, hold.member_id, hold.partner_id, hold.points, hold.status.value,
                hold.reference, hold_postings[hold_id], hold.created_at, hold.expires_at,
            )  # fmt: skip
        for hold_id in sorted(book.changed_holds - book.new_holds):
            hold = book.holds[hold_id]
            self.changed_holds.add(
                hold_id,
                hold.status.value,
                hold.transaction_id,
                hold.captured_points,
                hold.closed_at,
            )
        if book.debt != book.initial_debt:
            self.debts.add(book.member_id, book.debt)

    def _add_posting(self, book: MemberBook, posting: Posting, after: Balance | None) -> None:
        self.postings.add(
            posting.posting_id, posting.type.value, posting.member_id, posting.partner_id,
            posting.points, posting.reference, posting.reverses, posting.hold_id,
            posting.unit_price, posting.currency, posting.posted_at, posting.available_at,
            posting.expires_at, after.available if after else None, after.held if after else None,
            after.pending if after else None,
        )  # fmt: skip
        for line, entry in enumerate(posting.entries):
            self.entries.add(
                posting.posting_id,
                line,
                entry.account.value,
                entry.owner,
                entry.amount,
                posting.posted_at,
            )
        for allocation in posting.allocations:
            self.allocations.add(
                posting.posting_id, allocation.lot_id, allocation.kind.value, allocation.points
            )
            lot = book.lots[allocation.lot_id]
            counter = self.counters[lot.issuer_id]
            counter[1] += allocation.delta
            counter[2] += allocation.delta * lot.unit_price
        if (
            posting.type in (PostingType.EARN, PostingType.EARN_REVERSAL)
            and posting.unit_price is not None
        ):
            sign = 1 if posting.type is PostingType.EARN else -1
            self.counters[posting.partner_id or ""][0] += sign * posting.points * posting.unit_price

    def add_links(self, pairs: Iterable[tuple[str, str]]) -> None:
        for member_id, partner_id in sorted(set(pairs)):
            self.links.add(member_id, partner_id)

    def add_signatures(self, records: Iterable[SignatureRecord]) -> None:
        for r in records:
            self.signatures.add(
                r.posting_id,
                r.key_id,
                r.signature_input,
                r.signature,
                r.content_digest,
                r.signature_base,
            )

    def add_keys(self, records: Iterable[IdempotencyRecord]) -> None:
        for r in records:
            self.keys.add(
                r.partner_id, r.key, r.fingerprint, r.status_code, r.response, r.posting_id
            )

    def arguments(self) -> list[Any]:
        # Sorted by partner, so batches that meet on a shard row lock rows in one order.
        counters = _Columns(4)
        for partner_id, (issued, points, value) in sorted(self.counters.items()):
            if issued or points or value:
                counters.add(partner_id, issued, points, value)
        partner_ids, issued, points, values = counters.columns
        before = (
            self.postings, self.entries, self.new_lots, self.allocations, self.new_holds,
            self.changed_lots, self.changed_holds, self.debts,
        )  # fmt: skip
        after = (self.links, self.signatures, self.keys)
        return [
            *(column for part in before for column in part.columns),
            partner_ids, COUNTER_SHARDS, issued, points, values,
            *(column for part in after for column in part.columns),
        ]  # fmt: skip

    @property
    def empty(self) -> bool:
        """Nothing to write at all (a lot that matures empty still changes a row)."""
        parts = (
            self.postings, self.new_lots, self.changed_lots, self.new_holds,
            self.changed_holds, self.debts, self.links, self.signatures, self.keys,
        )  # fmt: skip
        return not any(part.columns[0] for part in parts)


async def write_batch(conn: Connection, batch: BatchWrite) -> None:
    """Write the whole batch in one round trip."""
    if not batch.empty:
        await conn.execute(_WRITE_SQL, *batch.arguments())


# -- reads -----------------------------------------------------------------------------------

# One statement, so one snapshot: a member's debt, open lots, open holds with what they
# reserved, and the lots those holds reserved from (an expired hold's points flow back
# through them).
_READ_BOOK_SQL = f"""
SELECT m.debt, (SELECT closed_until FROM ledger_state WHERE id = 1) AS closed_until,
       (SELECT coalesce(json_agg(json_build_array({_LOT_COLUMNS})), '[]')::text
        FROM (SELECT {_LOT_COLUMNS} FROM lots
              WHERE member_id = m.member_id AND (remaining > 0 OR NOT matured)
              UNION
              SELECT {", ".join("l." + c.strip() for c in _LOT_COLUMNS.split(","))}
              FROM holds AS h
              JOIN allocations AS a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
              JOIN lots AS l ON l.lot_id = a.lot_id
              WHERE h.member_id = m.member_id AND h.status = 'open') AS book_lots) AS lots,
       (SELECT coalesce(json_agg(json_build_array(
                   h.hold_id, h.partner_id, h.points, h.created_at, h.expires_at,
                   (SELECT json_agg(json_build_array(a.lot_id, a.points)
                                    ORDER BY l.expires_at, l.created_at, l.lot_id)
                    FROM allocations AS a JOIN lots AS l ON l.lot_id = a.lot_id
                    WHERE a.posting_id = h.hold_posting_id AND a.kind = 'draw'))), '[]')::text
        FROM holds AS h WHERE h.member_id = m.member_id AND h.status = 'open') AS holds
FROM members AS m WHERE m.member_id = $1
"""  # noqa: S608 - built from constant column lists, never from input


class _HoldRow(msgspec.Struct, array_like=True):
    hold_id: uuid.UUID
    partner_id: str
    points: int
    created_at: datetime
    expires_at: datetime
    draws: list[tuple[uuid.UUID, int]]


async def read_book(conn: Connection, member_id: str) -> tuple[MemberBook, datetime] | None:
    """A member's book for a balance read (no locks), or None for an unknown member."""
    row = await conn.fetchrow(_READ_BOOK_SQL, member_id)
    if row is None:
        return None
    book = MemberBook(member_id=member_id, debt=row["debt"])
    for lot in _lots(row["lots"]):
        book.lots[lot.lot_id] = lot
    for hold in msgspec.json.decode(row["holds"], type=list[_HoldRow]):
        book.holds[hold.hold_id] = Hold(
            hold_id=hold.hold_id, member_id=member_id, partner_id=hold.partner_id,
            points=hold.points, status=HoldStatus.OPEN, created_at=hold.created_at,
            expires_at=hold.expires_at, reference=None, draws=list(hold.draws),
        )  # fmt: skip
    return book, row["closed_until"]


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
