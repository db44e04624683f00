"""Ledger use cases. Each `submit` runs many requests in ONE database transaction.

That batch shape is the write path for everything: a single HTTP request is a batch of
one, and the group committer (`exchange.batching`) gathers concurrent requests into
bigger batches. Inside the database transaction the steps are fixed:

    barrier → idempotency try-locks → resolve holds/originals → lock members (sorted)
    → partner terms → load books → apply the pure rules per request → bulk write → commit

A request that fails (not enough points, a reused key) gets its error and changes
nothing: the rules validate before they mutate, and when no request in the batch
succeeded nothing is written at all. Deadlocks and key races retry the whole batch.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
from asyncpg import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange import store
from exchange.clock import Clock
from exchange.db import driver_connection
from exchange.errors import (
    ExchangeError,
    HoldNotFound,
    IdempotencyKeyReused,
    MemberNotFound,
    NotReversible,
    PartnerNotFound,
    PartnerSuspended,
    RequestInProgress,
    ServiceUnavailable,
    TransactionNotFound,
    Unprocessable,
)
from exchange.ids import new_member_id
from exchange.ledger import (
    PARTNER_TRANSACTION_TYPES,
    Balance,
    Context,
    MemberBook,
    OriginalPosting,
    PartnerState,
    Posting,
    PostingType,
    balance,
    burn,
    capture_hold,
    earn,
    new_id,
    open_hold,
    points_for_purchase,
    reverse,
    settle_due,
    void_hold,
)
from exchange.money import Money
from exchange.schemas import Hold, MemberCreated, Transaction, TransactionPage
from exchange.views import (
    decode_cursor,
    encode_cursor,
    hold_from_row,
    hold_view,
    transaction_from_row,
    transaction_view,
)

__all__ = [
    "Burn",
    "CaptureHold",
    "Command",
    "Earn",
    "Idempotency",
    "LedgerRequest",
    "LedgerService",
    "OpenHold",
    "Outcome",
    "Reverse",
    "SignatureProof",
    "SweepResult",
    "VoidHold",
    "remember",
    "replay_or_claim",
]

RETRIES_MAX = 5
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
SWEEP_ROUNDS_MAX = 100_000


@dataclass
class SweepResult:
    """What one sweep posted."""

    members: int = 0
    expired_points: int = 0
    matured_points: int = 0
    released_holds: int = 0

    def count(self, postings: Sequence[Posting]) -> None:
        for posting in postings:
            if posting.type is PostingType.EXPIRY:
                self.expired_points += posting.points
            elif posting.type is PostingType.MATURATION:
                self.matured_points += posting.points
            elif posting.type is PostingType.HOLD_RELEASE:
                self.released_holds += 1


@dataclass(frozen=True, slots=True)
class Earn:
    partner_id: str
    member_id: str
    reference: str
    points: int | None = None
    purchase: Money | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Burn:
    partner_id: str
    member_id: str
    points: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class OpenHold:
    partner_id: str
    member_id: str
    points: int
    reference: str | None = None
    expires_in_s: int = 900


@dataclass(frozen=True, slots=True)
class CaptureHold:
    partner_id: str
    hold_id: uuid.UUID
    points: int | None = None


@dataclass(frozen=True, slots=True)
class VoidHold:
    partner_id: str
    hold_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Reverse:
    partner_id: str
    transaction_id: uuid.UUID
    points: int | None = None
    reference: str | None = None


Command = Earn | Burn | OpenHold | CaptureHold | VoidHold | Reverse


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    fingerprint: bytes  # sha256 over method, path and body


@dataclass(frozen=True, slots=True)
class SignatureProof:
    """The verified signature of the request, kept with the posting for later disputes."""

    key_id: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes


@dataclass(frozen=True, slots=True)
class LedgerRequest:
    command: Command
    idempotency: Idempotency | None = None
    signature: SignatureProof | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer: a stored or new response, or an error (which changed nothing)."""

    status_code: int = 0
    body: bytes = b""
    replayed: bool = False
    error: ExchangeError | None = None


@dataclass
class _Batch:
    """Working state of one submit: which request is about which member, and results."""

    requests: Sequence[LedgerRequest]
    outcomes: list[Outcome | None]
    members: dict[int, str] = field(default_factory=dict)  # request index -> member_id
    originals: dict[uuid.UUID, OriginalPosting] = field(default_factory=dict)
    records: list[store.IdempotencyRecord] = field(default_factory=list)
    signatures: list[store.SignatureRecord] = field(default_factory=list)
    links: set[tuple[str, str]] = field(default_factory=set)
    after: dict[uuid.UUID, Balance] = field(default_factory=dict)

    def fail(self, index: int, error: ExchangeError) -> None:
        self.outcomes[index] = Outcome(status_code=error.status, error=error)

    def pending(self) -> list[int]:
        return [index for index, outcome in enumerate(self.outcomes) if outcome is None]


class LedgerService:
    """The ledger's use cases over one database (and one clock)."""

    def __init__(self, engine: AsyncEngine, clock: Clock, *, points_ttl: timedelta) -> None:
        self.engine = engine
        self.clock = clock
        self.points_ttl = points_ttl

    async def submit(self, requests: Sequence[LedgerRequest]) -> list[Outcome]:
        """Run the requests in one database transaction; one outcome per request, in order."""
        for attempt in range(RETRIES_MAX):
            try:
                async with driver_connection(self.engine) as conn:
                    with store.translate_errors():
                        return await self._run(conn, requests)
            except store.RetryableConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise ServiceUnavailable("The ledger is busy; retry the request with the same key.")

    async def _run(self, conn: Connection, requests: Sequence[LedgerRequest]) -> list[Outcome]:
        batch = _Batch(requests, [None] * len(requests))
        async with conn.transaction():
            await self._claim_keys(conn, batch)
            await self._resolve_members(conn, batch)
            books = await self._load(conn, batch)
            write = store.BatchWrite()
            write.add_books(books.values(), batch.after)
            write.add_links(batch.links)
            write.add_signatures(batch.signatures)
            write.add_keys(batch.records)
            if any(o and o.error is None and not o.replayed for o in batch.outcomes):
                await store.write_batch(conn, write)
            # else: nothing succeeded, so write nothing (not even due changes); the
            # transaction commits empty, releasing the locks.
        return [outcome or Outcome() for outcome in batch.outcomes]

    async def _load(self, conn: Connection, batch: _Batch) -> dict[str, MemberBook]:
        """Lock the members, load partners, originals and books; apply every request."""
        if not batch.pending():
            return {}
        debts, closed_until = await store.lock_members(conn, set(batch.members.values()))
        for index in batch.pending():
            if batch.members[index] not in debts:
                batch.fail(index, MemberNotFound(f"No member {batch.members[index]}."))
        partner_ids = {batch.requests[index].command.partner_id for index in batch.pending()}
        terms = await store.load_partner_terms(conn, partner_ids)
        partners = {partner_id: PartnerState(t) for partner_id, t in terms.items()}
        batch.originals = await store.load_originals(conn, self._reversal_targets(batch))
        books = await store.load_books(
            conn,
            debts,
            hold_ids=[
                c.hold_id for c in self._commands(batch) if isinstance(c, CaptureHold | VoidHold)
            ],
            lot_ids=self._original_lots(batch),
        )
        ctx = Context(
            now=self.clock.now(), closed_until=closed_until, points_ttl=self.points_ttl, ids=new_id
        )
        for index in batch.pending():
            self._apply(batch, index, books[batch.members[index]], partners, ctx)
        return books

    @staticmethod
    def _commands(batch: _Batch) -> list[Command]:
        return [batch.requests[index].command for index in batch.pending()]

    async def _claim_keys(self, conn: Connection, batch: _Batch) -> None:
        claims = {
            index: (request.command.partner_id, request.idempotency.key)
            for index, request in enumerate(batch.requests)
            if request.idempotency is not None
        }
        locked, stored = await store.claim_keys(conn, list(claims.values()))
        seen: set[tuple[str, str]] = set()
        for index, claim in claims.items():
            idempotency = batch.requests[index].idempotency
            if idempotency is None:  # pragma: no cover - claims only holds requests with keys
                continue
            if claim not in locked or claim in seen:
                batch.fail(index, RequestInProgress())
            elif claim in stored:
                previous = stored[claim]
                if previous.fingerprint != idempotency.fingerprint:
                    batch.fail(index, IdempotencyKeyReused())
                else:
                    batch.outcomes[index] = Outcome(
                        previous.status_code, previous.response, replayed=True
                    )
            seen.add(claim)

    async def _resolve_members(self, conn: Connection, batch: _Batch) -> None:
        """Which member each request is about; unknown or foreign holds and transactions
        are 404, exactly as if they did not exist."""
        commands = {index: batch.requests[index].command for index in batch.pending()}
        hold_ids = [c.hold_id for c in commands.values() if isinstance(c, CaptureHold | VoidHold)]
        posting_ids = [c.transaction_id for c in commands.values() if isinstance(c, Reverse)]
        hold_owners, posting_owners = await store.resolve_targets(conn, hold_ids, posting_ids)
        for index, command in commands.items():
            if isinstance(command, CaptureHold | VoidHold):
                owner = hold_owners.get(command.hold_id)
                if owner is None or owner[1] != command.partner_id:
                    batch.fail(index, HoldNotFound())
                    continue
                batch.members[index] = owner[0]
            elif isinstance(command, Reverse):
                posted = posting_owners.get(command.transaction_id)
                if (
                    posted is None
                    or posted[1] != command.partner_id
                    or posted[2] not in PARTNER_TRANSACTION_TYPES
                ):
                    batch.fail(index, TransactionNotFound())
                    continue
                if posted[2] in (PostingType.EARN_REVERSAL, PostingType.BURN_REVERSAL):
                    batch.fail(index, NotReversible("A reversal cannot itself be reversed."))
                    continue
                batch.members[index] = posted[0]
            else:
                batch.members[index] = command.member_id

    @staticmethod
    def _reversal_targets(batch: _Batch) -> list[uuid.UUID]:
        return [c.transaction_id for c in LedgerService._commands(batch) if isinstance(c, Reverse)]

    @staticmethod
    def _original_lots(batch: _Batch) -> list[uuid.UUID]:
        wanted: list[uuid.UUID] = []
        for original in batch.originals.values():
            if original.lot_id is not None:
                wanted.append(original.lot_id)
            wanted.extend(lot_id for lot_id, _ in original.draws)
        return wanted

    def _apply(
        self,
        batch: _Batch,
        index: int,
        book: MemberBook,
        partners: dict[str, PartnerState],
        ctx: Context,
    ) -> None:
        request = batch.requests[index]
        command = request.command
        partner = partners.get(command.partner_id)
        try:
            if partner is None:
                raise PartnerNotFound(f"No partner {command.partner_id}.")
            if not partner.terms.active:
                raise PartnerSuspended(f"Partner {command.partner_id} is suspended.")
            settle_due(book, ctx)
            status, body, posting = self._execute(batch, book, partner, command, ctx)
        except ExchangeError as error:
            batch.fail(index, error)
            return
        batch.outcomes[index] = Outcome(status, body)
        if isinstance(command, Earn | Burn | OpenHold):
            batch.links.add((book.member_id, command.partner_id))
        if request.idempotency is not None:
            batch.records.append(
                store.IdempotencyRecord(
                    command.partner_id,
                    request.idempotency.key,
                    request.idempotency.fingerprint,
                    status,
                    body,
                    posting.posting_id,
                )
            )
        if request.signature is not None:
            proof = request.signature
            batch.signatures.append(
                store.SignatureRecord(
                    posting.posting_id,
                    proof.key_id,
                    proof.signature_input,
                    proof.signature,
                    proof.content_digest,
                    proof.signature_base,
                )
            )

    def _execute(
        self, batch: _Batch, book: MemberBook, partner: PartnerState, command: Command, ctx: Context
    ) -> tuple[int, bytes, Posting]:
        """Apply one command with the pure rules; return (status, response body, posting)."""
        before = len(book.postings)
        hold = None
        match command:
            case Earn():
                points = command.points
                if points is None and command.purchase is not None:
                    points = points_for_purchase(
                        command.purchase.amount, command.purchase.currency, partner.terms
                    )
                if points is None:
                    raise Unprocessable("Give either points or purchase.")
                posting = earn(
                    book,
                    ctx,
                    partner,
                    points,
                    reference=command.reference,
                    available_at=command.available_at,
                    expires_at=command.expires_at,
                )
            case Burn():
                posting = burn(book, ctx, partner, command.points, reference=command.reference)
            case OpenHold():
                hold = open_hold(
                    book,
                    ctx,
                    partner,
                    command.points,
                    reference=command.reference,
                    expires_in_s=command.expires_in_s,
                )
            case CaptureHold():
                capture_hold(book, ctx, partner, command.hold_id, command.points)
                hold = book.holds[command.hold_id]
            case VoidHold():
                hold = void_hold(book, ctx, command.hold_id)
            case Reverse():
                original = batch.originals[command.transaction_id]
                posting = reverse(
                    book, ctx, partner, original, command.points, reference=command.reference
                )
        main = (
            next(p for p in book.postings[before:] if p.type is not PostingType.EXPIRY)
            if hold
            else posting
        )
        after = balance(book, ctx.now)
        batch.after[main.posting_id] = after
        if hold is not None:
            status = 201 if isinstance(command, OpenHold) else 200
            return status, msgspec.json.encode(hold_view(hold)), main
        return 201, msgspec.json.encode(transaction_view(main, after)), main

    # -- members ------------------------------------------------------------------------------

    async def enrol_member(
        self, partner_id: str, reference: str | None, idempotency: Idempotency | None
    ) -> Outcome:
        """Enrol a new member, linked to the enrolling partner."""
        async with self.engine.begin() as conn:
            with store.translate_errors():
                earlier = await replay_or_claim(conn, partner_id, idempotency)
                if earlier is not None:
                    return earlier
                member_id = new_member_id()
                now = self.clock.now()
                await store.create_member(conn, member_id, reference, partner_id, now)
                body = msgspec.json.encode(MemberCreated(member_id=member_id, created_at=now))
                await remember(
                    conn, partner_id, idempotency=idempotency, status_code=201, body=body
                )
        return Outcome(201, body)

    # -- time-driven work -------------------------------------------------------------------

    async def sweep(self, *, members_per_tx: int = 500) -> SweepResult:
        """Post everything that has fallen due (expiry, maturing points, holds past their
        expiry) for every member, a bounded number of members per database transaction.

        Balances never wait for the sweep (reads and postings apply due changes themselves);
        the sweep keeps the journal current for settlement and liability reports.
        """
        now = self.clock.now()
        result = SweepResult()
        for _ in range(SWEEP_ROUNDS_MAX):
            done = await self._sweep_round(now, members_per_tx, result)
            if done:
                break
        return result

    async def _sweep_round(self, now: datetime, limit: int, result: SweepResult) -> bool:
        for attempt in range(RETRIES_MAX):
            try:
                async with driver_connection(self.engine) as conn:
                    with store.translate_errors():
                        async with conn.transaction():
                            return await self._sweep_members(conn, now, limit, result)
            except store.RetryableConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise ServiceUnavailable("The sweep kept conflicting with postings; it will run again.")

    async def _sweep_members(
        self, conn: Connection, now: datetime, limit: int, result: SweepResult
    ) -> bool:
        """One round: lock up to `limit` members with something due, settle them, write."""
        await store.claim_keys(conn, [])  # the settlement barrier, shared
        member_ids = await store.due_member_ids(conn, now, limit)
        if not member_ids:
            return True
        debts, closed_until = await store.lock_members(conn, member_ids)
        books = await store.load_books(conn, debts)
        ctx = Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=new_id)
        for book in books.values():
            settle_due(book, ctx)
            result.count(book.postings)
        write = store.BatchWrite()
        write.add_books(books.values(), {})
        await store.write_batch(conn, write)
        result.members += len(books)
        return len(member_ids) < limit

    # -- reads ------------------------------------------------------------------------------

    async def get_transaction(self, partner_id: str, posting_id: uuid.UUID) -> Transaction:
        """One of the partner's own transactions; anything else is 404."""
        async with self.engine.connect() as conn:
            row = await store.fetch_posting(conn, posting_id)
        if row is None or row.partner_id != partner_id or row.type not in PARTNER_TRANSACTION_TYPES:
            raise TransactionNotFound()
        return transaction_from_row(row)

    async def list_transactions(
        self,
        *,
        partner_id: str | None = None,
        member_id: str | None = None,
        types: Sequence[str] = tuple(PARTNER_TRANSACTION_TYPES),
        reference: str | None = None,
        after: str | None = None,
        limit: int = PAGE_SIZE_DEFAULT,
    ) -> TransactionPage:
        """Newest first; `after` is the `next` cursor of the previous page."""
        before = None
        if after is not None:
            before = decode_cursor(after)
            if before is None:
                raise Unprocessable("after is not a cursor this API returned.")
        async with self.engine.connect() as conn:
            rows = await store.list_postings(
                conn,
                types=types,
                limit=limit + 1,
                partner_id=partner_id,
                member_id=member_id,
                reference=reference,
                before=before,
            )
        page = rows[:limit]
        cursor = (
            encode_cursor(page[-1].posted_at, page[-1].posting_id) if len(rows) > limit else None
        )
        return TransactionPage(items=[transaction_from_row(row) for row in page], next=cursor)

    async def get_hold(self, partner_id: str, hold_id: uuid.UUID) -> Hold:
        async with self.engine.connect() as conn:
            row = await store.fetch_hold(conn, hold_id)
        if row is None or row.partner_id != partner_id:
            raise HoldNotFound()
        return hold_from_row(row, self.clock.now())

    # -- balances -----------------------------------------------------------------------------

    async def read_balance(self, member_id: str, *, partner_id: str | None = None) -> Balance:
        """The member's balance now, from one consistent snapshot (no locks taken). With
        `partner_id`, only for a member linked to that partner (else: not found)."""
        async with driver_connection(self.engine) as conn:
            loaded = await store.read_book(conn, member_id, linked_to=partner_id)
        if loaded is None:
            raise MemberNotFound(f"No member {member_id}.")
        book, closed_until = loaded
        now = self.clock.now()
        # Apply what has fallen due to this throwaway copy, exactly as a posting would.
        settle_due(
            book,
            Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=uuid.uuid4),
        )
        return balance(book, now)


async def replay_or_claim(
    conn: AsyncConnection, partner_id: str, idempotency: Idempotency | None
) -> Outcome | None:
    """For a single idempotent request: the earlier response (a replay), an error (the key
    is in use or was used for another request), or None: go ahead, the key is ours until
    the database transaction ends."""
    if idempotency is None:
        return None
    claim = (partner_id, idempotency.key)
    locked, stored = await store.claim_idempotency_keys(conn, [claim])
    if claim not in locked:
        raise RequestInProgress()
    previous = stored.get(claim)
    if previous is None:
        return None
    if previous.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return Outcome(previous.status_code, previous.response, replayed=True)


async def remember(
    conn: AsyncConnection,
    partner_id: str,
    *,
    idempotency: Idempotency | None,
    status_code: int,
    body: bytes,
    posting_id: uuid.UUID | None = None,
) -> None:
    """Store the response under the request's idempotency key (same database transaction)."""
    if idempotency is not None:
        await store.save_idempotency(
            conn,
            [
                store.IdempotencyRecord(
                    partner_id,
                    idempotency.key,
                    idempotency.fingerprint,
                    status_code,
                    body,
                    posting_id,
                )
            ],
        )
