"""`LedgerService`: the batch write path (its steps are in the package docstring),
enrolment, the sweep of time-driven changes, and reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.clock import Clock
from exchange.db import driver_connection
from exchange.errors import (
    HoldNotFound,
    IdempotencyKeyReused,
    MemberNotFound,
    NonceReplayed,
    NotReversible,
    RequestInProgress,
    ServiceUnavailable,
    TransactionNotFound,
    Unprocessable,
)
from exchange.ids import new_id, new_member_id
from exchange.ledger import (
    PARTNER_TRANSACTION_TYPES,
    Balance,
    Context,
    MemberBook,
    PartnerState,
    PostingType,
    apply_due,
    balance,
)
from exchange.members import QUALIFYING_WINDOW, tier_status
from exchange.retry import retry_conflicts
from exchange.schemas import HoldOut, MemberCreated, Transaction, TransactionPage
from exchange.service._batch import PendingBatch, apply_rule
from exchange.service._commands import (
    Burn,
    CaptureHold,
    Command,
    Earn,
    Idempotency,
    LedgerRequest,
    OpenHold,
    Outcome,
    Record,
    Render,
    Reverse,
    SweepResult,
    VoidHold,
)
from exchange.service._idempotency import claim_outcome, remember, replay_or_claim
from exchange.store import Connection
from exchange.views import (
    decode_cursor,
    encode_cursor,
    hold_from_row,
    render_effect,
    transaction_from_row,
)

__all__ = ["PAGE_SIZE_DEFAULT", "PAGE_SIZE_MAX", "LedgerService"]

RETRIES_MAX = 5
RETRY_BACKOFF_S = 0.005
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
SWEEP_ROUNDS_MAX = 100_000
# A batch of earns reads partial books good until this long after its claim began; its
# rules run after the locks are granted, and a batch that waited longer for them reads
# the books again, whole (`_load`).
PARTIAL_BOOK_MARGIN = timedelta(seconds=60)


class LedgerService:
    """The ledger's use cases over one database (and one clock)."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        points_ttl: timedelta,
        render: Render = render_effect,
        tiers: Sequence[tuple[str, int]] = (("base", 0),),
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.points_ttl = points_ttl
        # The HTTP layer's rendering of an operation (status and bytes); the service only
        # stores what it returns with the idempotency key.
        self.render = render
        self.tiers = tuple(tiers)

    async def submit(
        self,
        requests: Sequence[LedgerRequest],
        *,
        render: Render | None = None,
        record: Record | None = None,
    ) -> list[Outcome]:
        """Run the requests in one database transaction; one outcome per request, in order.
        `render` answers them instead of the service's own (a batch item's answer is its
        result, not the single endpoint's response); `record` writes the caller's own rows
        in the same transaction, after the ledger's (a batch item's result)."""

        async def attempt() -> list[Outcome]:
            async with driver_connection(self.engine) as conn:
                with store.translate_errors():
                    return await self._run(conn, requests, render or self.render, record)

        return await retry_conflicts(
            attempt,
            conflict=store.RetryableConflict,
            attempts=RETRIES_MAX,
            backoff_s=RETRY_BACKOFF_S,
            exhausted=ServiceUnavailable(
                "The ledger is busy; retry the request with the same key."
            ),
        )

    async def _run(
        self,
        conn: Connection,
        requests: Sequence[LedgerRequest],
        render: Render,
        record: Record | None,
    ) -> list[Outcome]:
        batch = PendingBatch(requests, [None] * len(requests), render)
        async with store.transaction(conn):
            read = await self._claim_keys(conn, batch, self._distinct_nonces(batch))
            await self._resolve_members(conn, batch)
            books = await self._load(conn, batch, read)
            write = store.BatchWrite()
            write.add_books(books.values(), batch.after, batch.posting_requests)
            write.add_links(batch.links)
            write.add_records(batch.records)
            if any(o and o.error is None and not o.replayed for o in batch.outcomes):
                await store.write_batch(conn, write)
            # else: nothing succeeded, so write nothing (not even due changes); the
            # transaction commits empty, releasing the locks.
            outcomes = [outcome or Outcome() for outcome in batch.outcomes]
            if record is not None:
                await record(conn, requests, outcomes)
        return outcomes

    async def _load(
        self,
        conn: Connection,
        batch: PendingBatch,
        read: tuple[store.Locked, store.Books, datetime | None] | None,
    ) -> dict[str, MemberBook]:
        """Lock the members and load their books (unless the claim did: `read`), load
        partners and originals; apply every request."""
        if not batch.pending():
            return {}
        due_by: datetime | None = None
        if read is not None:
            locked, loaded, due_by = read
        else:
            loaded = None
            locked = await store.lock_members(
                conn,
                set(batch.members.values()),
                partner_ids={batch.requests[index].command.partner_id for index in batch.pending()},
            )
        # The claim may have locked members of requests it then found replayed.
        wanted = {batch.members[index] for index in batch.pending()}
        debts = {member_id: debt for member_id, debt in locked.debts.items() if member_id in wanted}
        for index in batch.pending():
            if batch.members[index] not in debts:
                batch.fail(index, MemberNotFound(f"No member {batch.members[index]}."))
        partner_ids = {batch.requests[index].command.partner_id for index in batch.pending()}
        terms = await store.lock_credit_limited(
            conn, {p: t for p, t in locked.terms.items() if p in partner_ids}
        )
        partners = {partner_id: PartnerState(t) for partner_id, t in terms.items()}
        await self._load_tiers(conn, batch, partners)
        batch.originals = await store.load_originals(conn, self._reversal_targets(batch))
        now = self.clock.now()
        if loaded is not None and due_by is not None and now > due_by:
            loaded = None  # partial books read for an earlier moment: read them whole
        if loaded is None:
            books, closed_until = await store.load_books(
                conn,
                debts,
                hold_ids=[
                    c.hold_id
                    for c in self._commands(batch)
                    if isinstance(c, CaptureHold | VoidHold)
                ],
                lot_ids=self._original_lots(batch),
            )
        else:  # read with the locks: every locked member's, of which these are wanted
            books = {member_id: loaded.books[member_id] for member_id in debts}
            closed_until = loaded.closed_until
        ctx = Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=new_id)
        for index in batch.pending():
            apply_rule(batch, index, books[batch.members[index]], partners, ctx)
        return books

    async def _load_tiers(
        self, conn: Connection, batch: PendingBatch, partners: dict[str, PartnerState]
    ) -> None:
        """The tier of each member about to earn from a purchase with a partner that has
        tier multipliers: from the journal as committed before this batch (under the
        member's lock, so no other posting for the member is in flight)."""
        members = {
            batch.members[index]
            for index in batch.pending()
            if isinstance(command := batch.requests[index].command, Earn)
            and command.purchase is not None
            and command.points is None
            and command.partner_id in partners
            and partners[command.partner_id].terms.tier_multipliers
        }
        if not members:
            return
        since = self.clock.now() - QUALIFYING_WINDOW
        points = await store.qualifying_points(conn, members, since)
        batch.tiers = {m: tier_status(p, self.tiers).name for m, p in points.items()}

    @staticmethod
    def _commands(batch: PendingBatch) -> list[Command]:
        return [batch.requests[index].command for index in batch.pending()]

    @staticmethod
    def _distinct_nonces(batch: PendingBatch) -> dict[tuple[str, str], tuple[int, datetime]]:
        """Each signed request's nonce, to be spent in this database transaction (one
        durable commit for the nonce and the posting): the first request of each pair,
        with its time. A request repeating a nonce of an earlier one is refused as a
        replay, before its key is claimed."""
        first: dict[tuple[str, str], tuple[int, datetime]] = {}
        for index, request in enumerate(batch.requests):
            claim = request.nonce
            if claim is None:
                continue
            if (claim.key_id, claim.nonce) in first:
                batch.fail(index, NonceReplayed.spent())
            else:
                first[(claim.key_id, claim.nonce)] = (index, claim.seen_at)
        return first

    @staticmethod
    def _refuse_replays(
        batch: PendingBatch,
        nonces: dict[tuple[str, str], tuple[int, datetime]],
        spent: set[tuple[str, str]],
    ) -> None:
        """Refuse each request whose nonce was already stored; every other outcome,
        refusals included, commits with its nonce."""
        for pair, (index, _) in nonces.items():
            if pair not in spent:
                batch.fail(index, NonceReplayed.spent())

    async def _claim_keys(
        self,
        conn: Connection,
        batch: PendingBatch,
        nonces: dict[tuple[str, str], tuple[int, datetime]],
    ) -> tuple[store.Locked, store.Books, datetime | None] | None:
        """Spend the requests' `nonces` and claim their keys (with the settlement
        barrier); a replay is refused before its key is claimed. When every request names
        its member (earns, burns, new holds), all of it, the member locks and their books
        are one statement, and what it read is returned, with the moment by which partial
        books must be applied (None: whole books); otherwise the nonces are spent first,
        and None is returned (`_load` locks the members once resolved, then reads the
        books)."""
        claims = {
            index: (request.command.partner_id, request.idempotency.key)
            for index, request in enumerate(batch.requests)
            if request.idempotency is not None and batch.outcomes[index] is None
        }
        to_spend = [(key_id, nonce, at) for (key_id, nonce), (_, at) in nonces.items()]
        named = [batch.requests[index].command for index in batch.pending()]
        members_known = [c for c in named if isinstance(c, Earn | Burn | OpenHold)]
        fetched: tuple[store.Locked, store.Books, datetime | None] | None = None
        if named and len(members_known) == len(named):
            # Earns alone never draw on a lot: partial books will do, if the rules run
            # by `due_by` (`_load` reads the whole books otherwise).
            due_by = (
                self.clock.now() + PARTIAL_BOOK_MARGIN
                if all(isinstance(c, Earn) for c in named)
                else None
            )
            read = await store.claim_and_lock(
                conn,
                [(*claim, _nonce_of(batch.requests[index])) for index, claim in claims.items()],
                member_ids={command.member_id for command in members_known},
                partner_ids={command.partner_id for command in members_known},
                nonces=to_spend,
                due_by=due_by,
            )
            self._refuse_replays(batch, nonces, read.spent)
            locked, stored = read.locked, read.stored
            fetched = (read.lock_read, read.books, due_by)
        else:
            self._refuse_replays(batch, nonces, await store.claim_nonces(conn, to_spend))
            claims = {index: c for index, c in claims.items() if batch.outcomes[index] is None}
            locked, stored = await store.claim_keys(conn, list(claims.values()), barrier=True)
        seen: set[tuple[str, str]] = set()
        for index, claim in claims.items():
            if batch.outcomes[index] is not None:  # a replay: its key was not claimed
                continue
            idempotency = batch.requests[index].idempotency
            if idempotency is None:  # pragma: no cover - claims only holds requests with keys
                continue
            if claim in seen:  # twice in this batch: the first one is being processed
                batch.fail(index, RequestInProgress())
                continue
            seen.add(claim)
            try:  # the same decision as every single idempotent request's
                earlier = claim_outcome(claim, idempotency, locked, stored)
            except (RequestInProgress, IdempotencyKeyReused) as exc:
                batch.fail(index, exc)
            else:
                if earlier is not None:
                    batch.outcomes[index] = earlier
        return fetched

    async def _resolve_members(self, conn: Connection, batch: PendingBatch) -> None:
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
    def _reversal_targets(batch: PendingBatch) -> list[uuid.UUID]:
        return [c.transaction_id for c in LedgerService._commands(batch) if isinstance(c, Reverse)]

    @staticmethod
    def _original_lots(batch: PendingBatch) -> list[uuid.UUID]:
        wanted: list[uuid.UUID] = []
        for original in batch.originals.values():
            if original.lot_id is not None:
                wanted.append(original.lot_id)
            wanted.extend(lot_id for lot_id, _ in original.draws)
        return wanted

    # -- members ------------------------------------------------------------------------------

    async def enrol_member(
        self, partner_id: str, reference: str | None, idempotency: Idempotency | None
    ) -> Outcome:
        """Enrol a new member, linked to the enrolling partner."""
        async with driver_connection(self.engine) as conn, store.transaction(conn):
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

        async def attempt() -> bool:
            async with driver_connection(self.engine) as conn:
                with store.translate_errors():
                    async with store.transaction(conn):
                        return await self._sweep_members(conn, now, limit, result)

        return await retry_conflicts(
            attempt,
            conflict=store.RetryableConflict,
            attempts=RETRIES_MAX,
            backoff_s=RETRY_BACKOFF_S,
            exhausted=ServiceUnavailable(
                "The sweep kept conflicting with postings; it will run again."
            ),
        )

    async def _sweep_members(
        self, conn: Connection, now: datetime, limit: int, result: SweepResult
    ) -> bool:
        """One round: lock up to `limit` members with something due, apply what fell due, write."""
        await store.enter_settlement_barrier(conn)
        member_ids = await store.due_member_ids(conn, now, limit)
        if not member_ids:
            return True
        locked = await store.lock_members(conn, member_ids, include_erased=True)
        books, closed_until = await store.load_books(conn, locked.debts)
        ctx = Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=new_id)
        for book in books.values():
            apply_due(book, ctx)
            result.count(book.postings)
        write = store.BatchWrite()
        write.add_books(books.values(), {})
        await store.write_batch(conn, write)
        result.members += len(books)
        return len(member_ids) < limit

    # -- reads ------------------------------------------------------------------------------

    async def get_transaction(self, partner_id: str, posting_id: uuid.UUID) -> Transaction:
        """One of the partner's own transactions; anything else is 404."""
        async with driver_connection(self.engine) as conn:
            with store.translate_errors():
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
        posted_after: datetime | None = None,
        posted_before: datetime | None = None,
    ) -> TransactionPage:
        """Newest first; `after` is the `next` cursor of the previous page; `posted_after`
        (inclusive) and `posted_before` (exclusive) bound the posting time."""
        before = None
        if after is not None:
            before = decode_cursor(after)
            if before is None:
                raise Unprocessable("after is not a cursor this API returned.")
        async with driver_connection(self.engine) as conn:
            with store.translate_errors():
                rows = await store.list_postings(
                    conn,
                    types=types,
                    limit=limit + 1,
                    partner_id=partner_id,
                    member_id=member_id,
                    reference=reference,
                    before=before,
                    posted_after=posted_after,
                    posted_before=posted_before,
                )
        page = rows[:limit]
        cursor = (
            encode_cursor(page[-1].posted_at, page[-1].posting_id) if len(rows) > limit else None
        )
        return TransactionPage(items=[transaction_from_row(row) for row in page], next=cursor)

    async def get_hold(self, partner_id: str, hold_id: uuid.UUID) -> HoldOut:
        async with driver_connection(self.engine) as conn:
            with store.translate_errors():
                row = await store.fetch_hold(conn, hold_id)
        if row is None or row.partner_id != partner_id:
            raise HoldNotFound()
        return hold_from_row(row, self.clock.now())

    # -- balances -----------------------------------------------------------------------------

    async def read_balance(self, member_id: str, *, partner_id: str | None = None) -> Balance:
        """The member's balance now, from one consistent snapshot (no locks taken). With
        `partner_id`, only for a member linked to that partner (else: not found)."""
        now = self.clock.now()
        async with driver_connection(self.engine) as conn:
            # A partial book (`MemberBook.unloaded`): the balance at `now`, taken before.
            loaded = await store.read_book(conn, member_id, linked_to=partner_id, due_by=now)
        if loaded is None:
            raise MemberNotFound(f"No member {member_id}.")
        book, closed_until = loaded
        # Apply what has fallen due to this throwaway copy, exactly as a posting would.
        apply_due(
            book,
            Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=uuid.uuid4),
        )
        return balance(book, now)


def _nonce_of(request: LedgerRequest) -> tuple[str, str] | None:
    """The (key id, nonce) pair a signed request spends, if it carries one."""
    claim = request.nonce
    return None if claim is None else (claim.key_id, claim.nonce)
