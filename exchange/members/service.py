"""Members use cases: the balance with its tier, transfers, export and erasure.

A transfer runs in its own database transaction, with the posting path's steps and lock
order (the settlement barrier shared, the idempotency key try-locked, both member rows
locked in member_id order, books loaded, the pure rule applied, one write statement):

    barrier → member key → lock sender and recipient (sorted) → books → 30-day total
    → apply due changes → `ledger.transfer` → write postings, lots, allocations → key

so a transfer and any posting, burn or transfer in the opposite direction serialise on
the member rows without deadlocking, and nothing it refuses changes anything.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import schemas, store
from exchange.clock import Clock
from exchange.coalesce import Coalescer
from exchange.config import Settings
from exchange.db import driver_connection
from exchange.errors import (
    MemberNotFound,
    NonceReplayed,
    ServiceUnavailable,
)
from exchange.ids import format_transaction_id, new_id
from exchange.ledger import (
    Balance,
    BalanceAfter,
    Context,
    MemberBook,
    Posting,
    TransferLimits,
    apply_due,
    balance,
    balance_after,
    transfer,
)
from exchange.members import _store
from exchange.members._tiers import QUALIFYING_WINDOW, TierStatus, tier_status
from exchange.members.schemas import Erased, MemberExport, TransferLot, TransferOut
from exchange.service import Idempotency, NonceClaim, Outcome, claim_outcome
from exchange.views import balance_view

__all__ = ["TRANSFER_WINDOW", "MembersService", "tier_view"]

TRANSFER_WINDOW = timedelta(days=30)
RETRIES_MAX = 5
# Balance reads in one statement at most, and such statements in flight per process (as
# the group committer's batches: one fills while the other runs).
BALANCE_READS_MAX = 64
BALANCE_READS_AT_ONCE = 2
# While a statement runs, another starts only once this many reads wait (exchange.coalesce).
# 8 rather than group commit's 4: a read's statement is short, so waiting for it to end
# costs a read less than a statement of its own (docs/performance.md, "Twenty-first round").
BALANCE_READS_FILL_MIN = 8


class _Replayed:
    """A signed read whose nonce was already spent."""


_REPLAYED = _Replayed()
# (member id, the asking partner or None, the nonce its statement must spend, a number
# that makes a signed read's key its own; 0 for an unsigned one)
_BalanceRead: TypeAlias = tuple[str, str | None, NonceClaim | None, int]


def tier_view(status: TierStatus) -> schemas.Tier:
    following: schemas.NextTier | msgspec.UnsetType = msgspec.UNSET
    if status.next_name is not None and status.points_needed is not None:
        following = schemas.NextTier(name=status.next_name, points_needed=status.points_needed)
    return schemas.Tier(
        name=status.name, qualifying_points=status.qualifying_points, next=following
    )


def format_transfer_id(value: uuid.UUID) -> str:
    return f"trf_{value.hex}"


class MembersService:
    """Members' use cases over one database, one clock and the settings."""

    def __init__(self, engine: AsyncEngine, clock: Clock, settings: Settings) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.points_ttl = timedelta(days=settings.points_ttl_days)
        self.limits = TransferLimits(
            points_per_transfer_max=settings.transfer_points_max,
            points_per_30d_max=settings.transfer_points_30d_max,
        )
        self._signed_reads = itertools.count(1)
        self._balances = Coalescer(
            self._read_balances,
            batch_max=BALANCE_READS_MAX,
            concurrency=BALANCE_READS_AT_ONCE,
            fill_min=BALANCE_READS_FILL_MIN,
        )

    def _context(self, now: datetime, closed_until: datetime, ids: Any = new_id) -> Context:
        return Context(now=now, closed_until=closed_until, points_ttl=self.points_ttl, ids=ids)

    # -- balance with tier ----------------------------------------------------------------

    async def read_balance(
        self, member_id: str, *, partner_id: str | None = None, nonce: NonceClaim | None = None
    ) -> tuple[Balance, TierStatus]:
        """The balance and tier now, from one statement (one snapshot, no locks), which
        concurrent reads share (`exchange.coalesce`). With `partner_id`, only for a
        member linked to that partner; erased members: 404. With `nonce`, the same
        statement spends it (without waiting for the flush to disk), and a nonce already
        spent makes the read `NonceReplayed` whatever else it would have answered."""
        # A signed read's key is its own: two uses of one nonce must never share an answer.
        found = await self._balances.get(
            (member_id, partner_id, nonce, next(self._signed_reads) if nonce else 0)
        )
        if isinstance(found, _Replayed):
            raise NonceReplayed.spent()
        if found is None:
            raise MemberNotFound(f"No member {member_id}.")
        return found

    async def _read_balances(
        self, reads: Sequence[_BalanceRead]
    ) -> dict[_BalanceRead, tuple[Balance, TierStatus] | _Replayed]:
        now = self.clock.now()  # after every request read here arrived
        # Each nonce's first use here, with its time; any later use is a replay.
        first: dict[tuple[str, str], tuple[_BalanceRead, datetime]] = {}
        for read in reads:
            if (claim := read[2]) is not None:
                first.setdefault((claim.key_id, claim.nonce), (read, claim.seen_at))
        async with driver_connection(self.engine) as conn:
            # Partial books (`MemberBook.unloaded`): balances at `now`, taken before the read.
            loaded, spent = await store.read_books_with_qualifying(
                conn,
                list(dict.fromkeys((read[0], read[1]) for read in reads)),
                since=now - QUALIFYING_WINDOW,
                due_by=now,
                nonces=[(*pair, seen_at) for pair, (_, seen_at) in first.items()],
            )
        answered: dict[store.BalanceKey, tuple[Balance, TierStatus]] = {}
        for key, (book, closed_until, qualifying) in loaded.items():
            # Apply what has fallen due to this throwaway copy, exactly as a posting would.
            apply_due(book, self._context(now, closed_until, uuid.uuid4))
            answered[key] = (balance(book, now), tier_status(qualifying, self.settings.tiers))
        result: dict[_BalanceRead, tuple[Balance, TierStatus] | _Replayed] = {}
        for read in reads:
            claim = read[2]
            if claim is not None and (
                first[(claim.key_id, claim.nonce)][0] is not read
                or (claim.key_id, claim.nonce) not in spent
            ):
                result[read] = _REPLAYED  # stored before, or used twice in this statement
            elif (read[0], read[1]) in answered:
                result[read] = answered[(read[0], read[1])]
        return result

    # -- transfers --------------------------------------------------------------------------

    async def transfer(
        self, member_id: str, to_member_id: str, points: int, idempotency: Idempotency | None
    ) -> Outcome:
        """Move points (with their lots) from one member to another; 201 TransferOut."""
        for attempt in range(RETRIES_MAX):
            try:
                async with driver_connection(self.engine) as conn:
                    with store.translate_errors():
                        async with store.transaction(conn):
                            return await self._transfer(
                                conn, member_id, to_member_id, points, idempotency
                            )
            except store.RetryableConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise ServiceUnavailable("The ledger is busy; retry the transfer with the same key.")

    async def _transfer(
        self,
        conn: store.Connection,
        member_id: str,
        to_member_id: str,
        points: int,
        idempotency: Idempotency | None,
    ) -> Outcome:
        if idempotency is None:
            await store.enter_settlement_barrier(conn)
        else:  # the barrier (shared) and the member's key in one statement
            earlier = await self._replay(conn, member_id, idempotency)
            if earlier is not None:
                return earlier
        locked = await store.lock_members(conn, {member_id, to_member_id})
        debts = locked.debts
        for wanted in (member_id, to_member_id):
            if wanted not in debts:
                raise MemberNotFound(f"No member {wanted}.")
        books, closed_until = await store.load_books(conn, debts)
        now = self.clock.now()
        sent = await store.transferred_since(conn, member_id, now - TRANSFER_WINDOW)
        ctx = self._context(now, closed_until)
        for book in books.values():
            apply_due(book, ctx)
        sender, recipient = books[member_id], books[to_member_id]
        transfer_id = new_id()
        out_posting, in_posting = transfer(
            sender,
            recipient,
            ctx,
            points,
            clearing_owner=format_transfer_id(transfer_id),
            sent_30d=sent,
            limits=self.limits,
        )
        after = {
            out_posting.posting_id: balance_after(sender, now),
            in_posting.posting_id: balance_after(recipient, now),
        }
        body = msgspec.json.encode(
            _transfer_view(sender, out_posting, to_member_id, transfer_id, after)
        )
        write = store.BatchWrite()
        write.add_books(books.values(), after)
        await store.write_batch(conn, write)
        if idempotency is not None:
            record = store.IdempotencyRecord(
                member_id,
                idempotency.key,
                idempotency.fingerprint,
                201,
                body,
                out_posting.posting_id,
            )
            await store.remember(conn, [record], scope=store.MEMBER_KEYS, at=now)
        return Outcome(201, body)

    @staticmethod
    async def _replay(
        conn: store.Connection, member_id: str, idempotency: Idempotency
    ) -> Outcome | None:
        claim = (member_id, idempotency.key)
        locked, stored = await store.claim_keys(conn, [claim], scope=store.MEMBER_KEYS)
        return claim_outcome(claim, idempotency, locked, stored)

    # -- data rights ------------------------------------------------------------------------

    async def export(self, member_id: str) -> MemberExport:
        """Everything held about the member, from one consistent snapshot."""
        current, tier = await self.read_balance(member_id)
        now = self.clock.now()
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                sections = await _store.export_sections(conn, member_id)
        if sections is None:
            raise MemberNotFound(f"No member {member_id}.")
        return MemberExport(
            member_id=member_id,
            exported_at=now,
            balance=msgspec.to_builtins(balance_view(current)),
            tier=tier_view(tier),
            **sections,
        )

    async def refuse_erased(self, member_id: str) -> None:
        """404 for an erased member: its transactions stay in partners' own lists, but a
        request naming the member finds nothing."""
        async with self.engine.connect() as conn:
            status = await _store.member_status(conn, member_id)
        if status == "erased":
            raise MemberNotFound(f"No member {member_id}.")

    async def erase(self, member_id: str) -> Erased:
        """Scrub the member's references and links, revoke its sessions, mark it erased.
        The ledger keeps every amount under the pseudonymous member_id."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            with store.translate_errors():
                erased = await _store.erase_member(conn, member_id, now)
        if not erased:
            raise MemberNotFound(f"No member {member_id}.")
        return Erased(member_id=member_id, status="erased", erased_at=now)


def _transfer_view(
    sender: MemberBook,
    posting: Posting,
    to_member_id: str,
    transfer_id: uuid.UUID,
    after: dict[uuid.UUID, BalanceAfter],
) -> TransferOut:
    moved = [
        TransferLot(
            issuer=sender.lots[allocation.lot_id].issuer_id,
            points=allocation.points,
            expires_at=sender.lots[allocation.lot_id].expires_at,
        )
        for allocation in posting.allocations
    ]
    mine = after[posting.posting_id]
    return TransferOut(
        transaction_id=format_transaction_id(posting.posting_id),
        type=posting.type.value,
        transfer_id=format_transfer_id(transfer_id),
        member_id=posting.member_id,
        to_member_id=to_member_id,
        points=posting.points,
        posted_at=posting.posted_at,
        lots=moved,
        balance_after=schemas.BalanceAfter(
            available=mine.available, held=mine.held, pending=mine.pending
        ),
    )
