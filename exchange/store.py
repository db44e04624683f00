"""All ledger SQL: locks in one order, bulk inserts, balance and history queries.

Lock order inside a posting's database transaction (every writer follows it, so
writers cannot deadlock on each other):

1. the settlement barrier, shared (`enter_posting_barrier`);
2. idempotency keys, by non-blocking advisory try-locks (never waits);
3. member rows, `FOR NO KEY UPDATE`, sorted by member_id;
4. partner rows of credit-limited partners, `FOR NO KEY UPDATE`, sorted by partner_id;
5. partner counter shard rows, upserted sorted by (partner_id, shard).

Lots and holds belong to one member and are only changed under that member's lock.
Driver errors stop here: deadlocks and races surface as `RetryableConflict`, a violated
database guard as `InvariantViolation`.
"""

from __future__ import annotations

import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import InvariantViolation
from exchange.ledger import (
    AllocationKind,
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
from exchange.tables import (
    allocations,
    entries,
    holds,
    idempotency_keys,
    ledger_state,
    lots,
    member_links,
    members,
    partner_counters,
    partners,
    posting_signatures,
    postings,
)

__all__ = [
    "COUNTER_SHARDS",
    "SETTLEMENT_BARRIER_KEY",
    "IdempotencyRecord",
    "RetryableConflict",
    "SignatureRecord",
    "StoredResponse",
    "claim_idempotency_keys",
    "close_journal_until",
    "create_member",
    "due_members",
    "enter_posting_barrier",
    "fetch_hold",
    "fetch_posting",
    "hold_owners",
    "is_linked",
    "liability_by_issuer",
    "link_members",
    "list_postings",
    "load_books",
    "load_originals",
    "load_partner_terms",
    "lock_members",
    "posting_owners",
    "read_member",
    "save_idempotency",
    "save_signatures",
    "shard_of",
    "translate_errors",
    "write_books",
]

SETTLEMENT_BARRIER_KEY = 0x5E77_1E00_0001
COUNTER_SHARDS = 16
_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available


class RetryableConflict(Exception):
    """A transient conflict (deadlock, a concurrent first use of an idempotency key):
    the whole database transaction may be retried."""


def _sqlstate(exc: DBAPIError) -> str | None:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver errors to the exchange's: retryable conflicts and broken invariants."""
    try:
        yield
    except DBAPIError as exc:
        state = _sqlstate(exc)
        if state in _RETRYABLE:
            raise RetryableConflict(state) from exc
        if state == "23505" and "idempotency_keys" in str(exc.orig):
            raise RetryableConflict(state) from exc
        if state is not None and (state.startswith("23") or state == "P0001"):
            raise InvariantViolation(f"database refused a write ({state}): {exc.orig}") from exc
        raise


def shard_of(member_id: str) -> int:
    return zlib.crc32(member_id.encode()) % COUNTER_SHARDS


# -- the settlement barrier -------------------------------------------------------------------


async def enter_posting_barrier(conn: AsyncConnection) -> None:
    """Every posting transaction holds the barrier shared until it commits, so settlement,
    which takes it exclusively to move `closed_until`, never closes a period while a
    posting that could fall into it is still in flight."""
    await conn.execute(
        text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": SETTLEMENT_BARRIER_KEY}
    )


async def close_journal_until(conn: AsyncConnection, until: datetime) -> datetime:
    """Settlement: wait for in-flight postings, then close the journal before `until`.
    Returns the previous closing time. Must run in its own short database transaction."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SETTLEMENT_BARRIER_KEY})
    previous: datetime = (
        await conn.execute(select(ledger_state.c.closed_until).where(ledger_state.c.id == 1))
    ).scalar_one()
    if until > previous:
        await conn.execute(
            update(ledger_state).where(ledger_state.c.id == 1).values(closed_until=until)
        )
    return previous


# -- idempotency ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: bytes
    status_code: int
    response: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    partner_id: str
    key: str
    fingerprint: bytes
    status_code: int
    response: bytes
    posting_id: uuid.UUID | None


async def claim_idempotency_keys(
    conn: AsyncConnection, claims: Sequence[tuple[str, str]]
) -> tuple[set[tuple[str, str]], dict[tuple[str, str], StoredResponse]]:
    """Try-lock each (partner_id, key) and read what is stored for the ones we got.

    A key whose lock another transaction holds is being processed right now: the caller
    answers 409. The lock is released at commit, after the stored response is visible.
    """
    if not claims:
        return set(), {}
    partner_ids = [partner_id for partner_id, _ in claims]
    keys = [key for _, key in claims]
    locked_rows = await conn.execute(
        text(
            "SELECT c.partner_id, c.key, pg_try_advisory_xact_lock("
            "hashtextextended(c.partner_id || chr(31) || c.key, 0)) AS locked "
            "FROM unnest(CAST(:partner_ids AS text[]), CAST(:keys AS text[])) AS c(partner_id, key)"
        ),
        {"partner_ids": partner_ids, "keys": keys},
    )
    locked = {(row.partner_id, row.key) for row in locked_rows if row.locked}
    if not locked:
        return locked, {}
    stored_rows = await conn.execute(
        select(idempotency_keys).where(
            tuple_(idempotency_keys.c.partner_id, idempotency_keys.c.key).in_(sorted(locked))
        )
    )
    stored = {
        (row.partner_id, row.key): StoredResponse(row.fingerprint, row.status_code, row.response)
        for row in stored_rows
    }
    return locked, stored


async def save_idempotency(conn: AsyncConnection, records: Sequence[IdempotencyRecord]) -> None:
    if records:
        await conn.execute(
            idempotency_keys.insert(),
            [
                {
                    "partner_id": record.partner_id,
                    "key": record.key,
                    "fingerprint": record.fingerprint,
                    "status_code": record.status_code,
                    "response": record.response,
                    "posting_id": record.posting_id,
                }
                for record in records
            ],
        )


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    posting_id: uuid.UUID
    key_id: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes


async def save_signatures(conn: AsyncConnection, records: Sequence[SignatureRecord]) -> None:
    if records:
        await conn.execute(
            posting_signatures.insert(),
            [
                {
                    "posting_id": record.posting_id,
                    "key_id": record.key_id,
                    "signature_input": record.signature_input,
                    "signature": record.signature,
                    "content_digest": record.content_digest,
                    "signature_base": record.signature_base,
                }
                for record in records
            ],
        )


# -- finding what a command is about ----------------------------------------------------------


async def hold_owners(
    conn: AsyncConnection, hold_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str]]:
    """hold_id -> (member_id, partner_id), unlocked: only to learn which member to lock."""
    ids = list(set(hold_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        select(holds.c.hold_id, holds.c.member_id, holds.c.partner_id).where(
            holds.c.hold_id.in_(ids)
        )
    )
    return {row.hold_id: (row.member_id, row.partner_id) for row in rows}


async def posting_owners(
    conn: AsyncConnection, posting_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None, str]]:
    """posting_id -> (member_id, partner_id, type), unlocked (postings never change)."""
    ids = list(set(posting_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        select(
            postings.c.posting_id, postings.c.member_id, postings.c.partner_id, postings.c.type
        ).where(postings.c.posting_id.in_(ids))
    )
    return {row.posting_id: (row.member_id, row.partner_id, row.type) for row in rows}


# -- locking and loading ----------------------------------------------------------------------


async def lock_members(
    conn: AsyncConnection, member_ids: Iterable[str]
) -> tuple[dict[str, int], datetime]:
    """Lock member rows in member_id order; return their debts and the journal's closing time.

    Reading `closed_until` here, after the barrier is held, sees its latest value: it only
    moves under the exclusive barrier.
    """
    ids = sorted(set(member_ids))
    closed_until_sql = (
        select(ledger_state.c.closed_until).where(ledger_state.c.id == 1).scalar_subquery()
    )
    rows = await conn.execute(
        select(members.c.member_id, members.c.debt, closed_until_sql.label("closed_until"))
        .where(members.c.member_id.in_(ids))
        .order_by(members.c.member_id)
        .with_for_update(key_share=True)
    )
    debts: dict[str, int] = {}
    closed_until: datetime | None = None
    for row in rows:
        debts[row.member_id] = row.debt
        closed_until = row.closed_until
    if closed_until is None:
        closed_until = (
            await conn.execute(select(ledger_state.c.closed_until).where(ledger_state.c.id == 1))
        ).scalar_one()
    return debts, closed_until


async def read_member(conn: AsyncConnection, member_id: str) -> tuple[dict[str, int], datetime]:
    """Like `lock_members` for one member, without the lock (for reads)."""
    closed_until_sql = (
        select(ledger_state.c.closed_until).where(ledger_state.c.id == 1).scalar_subquery()
    )
    row = (
        await conn.execute(
            select(members.c.debt, closed_until_sql.label("closed_until")).where(
                members.c.member_id == member_id
            )
        )
    ).first()
    if row is None:
        return {}, datetime.min
    return {member_id: row.debt}, row.closed_until


def _terms(row: Any, exposure: Decimal) -> PartnerTerms:
    return PartnerTerms(
        partner_id=row.partner_id,
        active=row.status == "active",
        settlement_currency=row.settlement_currency,
        issue_price=row.issue_price,
        redemption_value=row.redemption_value,
        earn_rates={currency: Decimal(rate) for currency, rate in row.earn_rates.items()},
        credit_limit=row.credit_limit,
        exposure=exposure,
    )


async def load_partner_terms(
    conn: AsyncConnection, partner_ids: Iterable[str]
) -> dict[str, PartnerTerms]:
    """The terms in force now. Partners with a credit limit are locked (so that checking
    and adding to their unsettled issuance is atomic) and their exposure is summed."""
    ids = sorted(set(partner_ids))
    if not ids:
        return {}
    rows = list(await conn.execute(select(partners).where(partners.c.partner_id.in_(ids))))
    limited = sorted(row.partner_id for row in rows if row.credit_limit is not None)
    exposures: dict[str, Decimal] = {}
    if limited:
        locked = await conn.execute(
            select(partners)
            .where(partners.c.partner_id.in_(limited))
            .order_by(partners.c.partner_id)
            .with_for_update(key_share=True)
        )
        rows = [row for row in rows if row.partner_id not in limited] + list(locked)
        totals = await conn.execute(
            select(partner_counters.c.partner_id, func.sum(partner_counters.c.issued_value))
            .where(partner_counters.c.partner_id.in_(limited))
            .group_by(partner_counters.c.partner_id)
        )
        issued = {partner_id: total for partner_id, total in totals}
        for row in rows:
            if row.partner_id in limited:
                exposures[row.partner_id] = (
                    issued.get(row.partner_id, Decimal(0)) - row.settled_issuance
                )
    return {row.partner_id: _terms(row, exposures.get(row.partner_id, Decimal(0))) for row in rows}


def _lot(row: Any) -> Lot:
    return Lot(
        lot_id=row.lot_id,
        member_id=row.member_id,
        issuer_id=row.issuer_id,
        earn_id=row.earn_id,
        initial=row.initial,
        remaining=row.remaining,
        unit_price=row.unit_price,
        available_at=row.available_at,
        expires_at=row.expires_at,
        matured=row.matured,
        created_at=row.created_at,
    )


async def _load_holds(
    conn: AsyncConnection, member_ids: list[str], hold_ids: list[uuid.UUID]
) -> list[Hold]:
    """Open holds of the members, plus the named holds whatever their status."""
    condition = and_(holds.c.member_id.in_(member_ids), holds.c.status == HoldStatus.OPEN.value)
    if hold_ids:
        condition = condition | holds.c.hold_id.in_(hold_ids)
    hold_rows = list(await conn.execute(select(holds).where(condition)))
    if not hold_rows:
        return []
    draw_rows = await conn.execute(
        select(allocations.c.posting_id, allocations.c.lot_id, allocations.c.points)
        .join(lots, lots.c.lot_id == allocations.c.lot_id)
        .where(
            allocations.c.posting_id.in_([row.hold_posting_id for row in hold_rows]),
            allocations.c.kind == AllocationKind.DRAW.value,
        )
        .order_by(allocations.c.posting_id, lots.c.expires_at, lots.c.created_at, lots.c.lot_id)
    )
    draws: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = defaultdict(list)
    for row in draw_rows:
        draws[row.posting_id].append((row.lot_id, row.points))
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
            draws=draws[row.hold_posting_id],
            captured_points=row.captured_points,
            transaction_id=row.transaction_id,
            closed_at=row.closed_at,
        )
        for row in hold_rows
    ]


async def load_books(
    conn: AsyncConnection,
    debts: dict[str, int],
    *,
    hold_ids: Iterable[uuid.UUID] = (),
    lot_ids: Iterable[uuid.UUID] = (),
) -> dict[str, MemberBook]:
    """Each member's open lots and open holds (and the lots those holds drew on), plus
    the named holds and lots a command needs (a reversal's lots, a hold to capture)."""
    member_ids = sorted(debts)
    books = {
        member_id: MemberBook(member_id=member_id, debt=debt) for member_id, debt in debts.items()
    }
    if not member_ids:
        return books
    loaded_holds = await _load_holds(conn, member_ids, list(set(hold_ids)))
    wanted_lots = set(lot_ids)
    for hold in loaded_holds:
        wanted_lots.update(lot_id for lot_id, _ in hold.draws)
    condition = and_(lots.c.member_id.in_(member_ids), (lots.c.remaining > 0) | ~lots.c.matured)
    if wanted_lots:
        condition = condition | lots.c.lot_id.in_(sorted(wanted_lots))
    for row in await conn.execute(select(lots).where(condition)):
        books[row.member_id].lots[row.lot_id] = _lot(row)
    for hold in loaded_holds:
        books[hold.member_id].holds[hold.hold_id] = hold
    return books


async def load_originals(
    conn: AsyncConnection, posting_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, OriginalPosting]:
    """Transactions to reverse, with what earlier reversals took back (read under the
    member's lock, so no other reversal of the same transaction can be in flight)."""
    ids = sorted(set(posting_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT o.posting_id, o.type, o.partner_id, o.member_id, o.points, o.unit_price, "
            "o.currency, "
            "(SELECT coalesce(sum(r.points), 0) FROM postings r WHERE r.reverses = o.posting_id) "
            "AS reversed_points, "
            "(SELECT l.lot_id FROM lots l WHERE l.earn_id = o.posting_id) AS lot_id "
            "FROM postings o WHERE o.posting_id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": ids},
    )
    originals = list(rows)
    burn_ids = [row.posting_id for row in originals if row.type == PostingType.BURN.value]
    draws: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = defaultdict(list)
    restored: dict[uuid.UUID, dict[uuid.UUID, int]] = defaultdict(dict)
    if burn_ids:
        draw_rows = await conn.execute(
            select(allocations.c.posting_id, allocations.c.lot_id, allocations.c.points)
            .join(lots, lots.c.lot_id == allocations.c.lot_id)
            .where(
                allocations.c.posting_id.in_(burn_ids),
                allocations.c.kind == AllocationKind.DRAW.value,
            )
            .order_by(allocations.c.posting_id, lots.c.expires_at, lots.c.created_at, lots.c.lot_id)
        )
        for row in draw_rows:
            draws[row.posting_id].append((row.lot_id, row.points))
        restored_rows = await conn.execute(
            select(
                postings.c.reverses,
                allocations.c.lot_id,
                func.sum(allocations.c.points).label("points"),
            )
            .join(allocations, allocations.c.posting_id == postings.c.posting_id)
            .where(
                postings.c.reverses.in_(burn_ids),
                allocations.c.kind == AllocationKind.RELEASE.value,
            )
            .group_by(postings.c.reverses, allocations.c.lot_id)
        )
        for row in restored_rows:
            restored[row.reverses][row.lot_id] = int(row.points)
    return {
        row.posting_id: OriginalPosting(
            posting_id=row.posting_id,
            type=PostingType(row.type),
            partner_id=row.partner_id,
            member_id=row.member_id,
            points=row.points,
            unit_price=row.unit_price,
            currency=row.currency,
            reversed_points=int(row.reversed_points),
            lot_id=row.lot_id,
            draws=tuple(draws[row.posting_id]),
            restored=restored[row.posting_id],
        )
        for row in originals
    }


# -- writing ----------------------------------------------------------------------------------


def _posting_row(posting: Posting, after: Balance | None) -> dict[str, Any]:
    return {
        "posting_id": posting.posting_id,
        "type": posting.type.value,
        "member_id": posting.member_id,
        "partner_id": posting.partner_id,
        "points": posting.points,
        "reference": posting.reference,
        "reverses": posting.reverses,
        "hold_id": posting.hold_id,
        "unit_price": posting.unit_price,
        "currency": posting.currency,
        "posted_at": posting.posted_at,
        "available_at": posting.available_at,
        "expires_at": posting.expires_at,
        "available_after": after.available if after else None,
        "held_after": after.held if after else None,
        "pending_after": after.pending if after else None,
    }


def _lot_row(lot: Lot) -> dict[str, Any]:
    return {
        "lot_id": lot.lot_id,
        "member_id": lot.member_id,
        "issuer_id": lot.issuer_id,
        "earn_id": lot.earn_id,
        "initial": lot.initial,
        "remaining": lot.remaining,
        "unit_price": lot.unit_price,
        "available_at": lot.available_at,
        "expires_at": lot.expires_at,
        "matured": lot.matured,
        "created_at": lot.created_at,
    }


def _hold_row(hold: Hold, hold_posting_id: uuid.UUID | None) -> dict[str, Any]:
    row = {
        "hold_id": hold.hold_id,
        "status": hold.status.value,
        "transaction_id": hold.transaction_id,
        "captured_points": hold.captured_points,
        "closed_at": hold.closed_at,
    }
    if hold_posting_id is not None:
        row |= {
            "member_id": hold.member_id,
            "partner_id": hold.partner_id,
            "points": hold.points,
            "reference": hold.reference,
            "hold_posting_id": hold_posting_id,
            "created_at": hold.created_at,
            "expires_at": hold.expires_at,
        }
    return row


@dataclass
class _Rows:
    postings: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    allocations: list[dict[str, Any]]
    new_lots: list[dict[str, Any]]
    changed_lots: list[dict[str, Any]]
    new_holds: list[dict[str, Any]]
    changed_holds: list[dict[str, Any]]
    debts: list[dict[str, Any]]
    counters: dict[tuple[str, int], list[Any]]


def _book_rows(books: Iterable[MemberBook], after: dict[uuid.UUID, Balance]) -> _Rows:
    rows = _Rows([], [], [], [], [], [], [], [], defaultdict(lambda: [Decimal(0), 0, Decimal(0)]))
    for book in books:
        shard = shard_of(book.member_id)
        touched: set[uuid.UUID] = set(book.matured_lots)
        hold_postings: dict[uuid.UUID, uuid.UUID] = {}
        for posting in book.postings:
            rows.postings.append(_posting_row(posting, after.get(posting.posting_id)))
            for line, entry in enumerate(posting.entries):
                rows.entries.append(
                    {
                        "posting_id": posting.posting_id,
                        "line": line,
                        "account": entry.account.value,
                        "owner": entry.owner,
                        "amount": entry.amount,
                        "posted_at": posting.posted_at,
                    }
                )
            for allocation in posting.allocations:
                rows.allocations.append(
                    {
                        "posting_id": posting.posting_id,
                        "lot_id": allocation.lot_id,
                        "kind": allocation.kind.value,
                        "points": allocation.points,
                    }
                )
                touched.add(allocation.lot_id)
                lot = book.lots[allocation.lot_id]
                counter = rows.counters[(lot.issuer_id, shard)]
                counter[1] += allocation.delta
                counter[2] += allocation.delta * lot.unit_price
            if (
                posting.type in (PostingType.EARN, PostingType.EARN_REVERSAL)
                and posting.unit_price is not None
            ):
                sign = 1 if posting.type is PostingType.EARN else -1
                rows.counters[(posting.partner_id or "", shard)][0] += (
                    sign * posting.points * posting.unit_price
                )
            if posting.type is PostingType.HOLD and posting.hold_id is not None:
                hold_postings[posting.hold_id] = posting.posting_id
        for lot_id in book.new_lots:
            lot = book.lots[lot_id]
            rows.new_lots.append(_lot_row(lot))
            counter = rows.counters[(lot.issuer_id, shard)]
            counter[1] += lot.initial
            counter[2] += lot.initial * lot.unit_price
        for lot_id in sorted(touched - book.new_lots):
            lot = book.lots[lot_id]
            rows.changed_lots.append(
                {"b_lot_id": lot_id, "b_remaining": lot.remaining, "b_matured": lot.matured}
            )
        for hold_id in book.new_holds:
            rows.new_holds.append(_hold_row(book.holds[hold_id], hold_postings[hold_id]))
        for hold_id in sorted(book.changed_holds - book.new_holds):
            row = _hold_row(book.holds[hold_id], None)
            rows.changed_holds.append({f"b_{key}": value for key, value in row.items()})
        if book.debt != book.initial_debt:
            rows.debts.append({"b_member_id": book.member_id, "b_debt": book.debt})
    return rows


_ARRAY_TYPES = {
    "UUID": "uuid[]",
    "VARCHAR": "text[]",
    "TEXT": "text[]",
    "BIGINT": "bigint[]",
    "SMALLINT": "smallint[]",
    "INTEGER": "integer[]",
    "NUMERIC": "numeric[]",
    "TIMESTAMP": "timestamptz[]",
    "BOOLEAN": "boolean[]",
    "BYTEA": "bytea[]",
}


def _array_type(column: Any) -> str:
    name = column.type.compile(dialect=postgresql.dialect()).split("(")[0].split(" ")[0]
    return _ARRAY_TYPES[name]


async def _bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert all rows in ONE statement (`INSERT ... SELECT FROM unnest(arrays)`): one round
    trip whatever the count, and statement-level guards (balanced postings) see them all."""
    if not rows:
        return
    columns = [column for column in table.columns if column.name in rows[0]]
    casts = ", ".join(f"CAST(:{column.name} AS {_array_type(column)})" for column in columns)
    names = ", ".join(column.name for column in columns)
    statement = text(f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({casts})")  # noqa: S608
    await conn.execute(
        statement, {column.name: [row[column.name] for row in rows] for column in columns}
    )


async def write_books(
    conn: AsyncConnection, books: Iterable[MemberBook], after: dict[uuid.UUID, Balance]
) -> None:
    """Persist what the rules did to each book: the new postings with their entries and
    allocations, new and changed lots and holds, debts, and the partner counters."""
    rows = _book_rows(books, after)
    await _bulk_insert(conn, postings, rows.postings)
    await _bulk_insert(conn, entries, rows.entries)
    await _bulk_insert(conn, lots, rows.new_lots)
    await _bulk_insert(conn, allocations, rows.allocations)
    await _bulk_insert(conn, holds, rows.new_holds)
    if rows.changed_lots:
        await conn.execute(
            update(lots)
            .where(lots.c.lot_id == bindparam("b_lot_id"))
            .values(remaining=bindparam("b_remaining"), matured=bindparam("b_matured")),
            rows.changed_lots,
        )
    if rows.changed_holds:
        await conn.execute(
            update(holds)
            .where(holds.c.hold_id == bindparam("b_hold_id"))
            .values(
                status=bindparam("b_status"),
                transaction_id=bindparam("b_transaction_id"),
                captured_points=bindparam("b_captured_points"),
                closed_at=bindparam("b_closed_at"),
            ),
            rows.changed_holds,
        )
    if rows.debts:
        await conn.execute(
            update(members)
            .where(members.c.member_id == bindparam("b_member_id"))
            .values(debt=bindparam("b_debt")),
            rows.debts,
        )
    await _add_to_counters(conn, rows.counters)


async def _add_to_counters(conn: AsyncConnection, deltas: dict[tuple[str, int], list[Any]]) -> None:
    values = [
        {
            "partner_id": partner_id,
            "shard": shard,
            "issued_value": issued,
            "liability_points": points,
            "liability_value": value,
        }
        for (partner_id, shard), (issued, points, value) in sorted(deltas.items())
        if issued or points or value
    ]
    if not values:
        return
    statement = pg_insert(partner_counters).values(values)
    excluded = statement.excluded
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[partner_counters.c.partner_id, partner_counters.c.shard],
            set_={
                "issued_value": partner_counters.c.issued_value + excluded.issued_value,
                "liability_points": partner_counters.c.liability_points + excluded.liability_points,
                "liability_value": partner_counters.c.liability_value + excluded.liability_value,
            },
        )
    )


async def link_members(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> None:
    """Link members to the partners that posted for them (enrolment, earn, burn, hold)."""
    values = [
        {"member_id": member_id, "partner_id": partner_id}
        for member_id, partner_id in sorted(set(pairs))
    ]
    if values:
        await conn.execute(pg_insert(member_links).values(values).on_conflict_do_nothing())


async def liability_by_issuer(conn: AsyncConnection) -> dict[str, tuple[int, Decimal]]:
    """Outstanding points per issuing partner and their value at the issue price each was
    posted at: a sum over a few counter rows per partner, cheap at any moment. (Lots past
    their expiry count until the sweep or the member's next posting expires them.)"""
    rows = await conn.execute(
        select(
            partner_counters.c.partner_id,
            func.sum(partner_counters.c.liability_points),
            func.sum(partner_counters.c.liability_value),
        ).group_by(partner_counters.c.partner_id)
    )
    return {partner_id: (int(points), value) for partner_id, points, value in rows}


async def due_members(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """Members with something fallen due by `now`: a lot to expire or to mature, or an
    open hold to release. Uses the partial indexes on open lots and open holds."""
    rows = await conn.execute(
        text(
            "SELECT member_id FROM ("
            " (SELECT member_id FROM lots"
            "  WHERE remaining > 0 AND expires_at <= :now LIMIT :limit)"
            " UNION (SELECT member_id FROM lots"
            "  WHERE NOT matured AND available_at <= :now LIMIT :limit)"
            " UNION (SELECT member_id FROM holds"
            "  WHERE status = 'open' AND expires_at <= :now LIMIT :limit)"
            ") AS due ORDER BY member_id LIMIT :limit"
        ),
        {"now": now, "limit": limit},
    )
    return [row.member_id for row in rows]


async def create_member(
    conn: AsyncConnection, member_id: str, reference: str | None, partner_id: str, now: datetime
) -> None:
    await conn.execute(
        members.insert().values(
            member_id=member_id, reference=reference, enrolled_by=partner_id, created_at=now
        )
    )
    await link_members(conn, [(member_id, partner_id)])


async def is_linked(conn: AsyncConnection, member_id: str, partner_id: str) -> bool:
    row = await conn.execute(
        select(member_links.c.member_id).where(
            member_links.c.member_id == member_id, member_links.c.partner_id == partner_id
        )
    )
    return row.first() is not None


async def fetch_posting(conn: AsyncConnection, posting_id: uuid.UUID) -> Any | None:
    return (await conn.execute(select(postings).where(postings.c.posting_id == posting_id))).first()


async def fetch_hold(conn: AsyncConnection, hold_id: uuid.UUID) -> Any | None:
    return (await conn.execute(select(holds).where(holds.c.hold_id == hold_id))).first()


async def list_postings(
    conn: AsyncConnection,
    *,
    types: Sequence[str],
    limit: int,
    partner_id: str | None = None,
    member_id: str | None = None,
    reference: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Any]:
    """Postings newest first, keyset-paginated on (posted_at, posting_id)."""
    query = select(postings).where(postings.c.type.in_(list(types)))
    if partner_id is not None:
        query = query.where(postings.c.partner_id == partner_id)
    if member_id is not None:
        query = query.where(postings.c.member_id == member_id)
    if reference is not None:
        query = query.where(postings.c.reference == reference)
    if before is not None:
        query = query.where(tuple_(postings.c.posted_at, postings.c.posting_id) < tuple_(*before))
    query = query.order_by(postings.c.posted_at.desc(), postings.c.posting_id.desc()).limit(limit)
    return list(await conn.execute(query))
