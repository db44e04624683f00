"""Partial books give the answers whole books give (migration 0021, `MemberBook.unloaded`).

Earns and balance reads load only the lots an earn can touch: what falls due by the
moment the book is used at, and lots not yet matured. The rest of the member's points
count as `unloaded`, with their sums on their five soonest expiry dates. Each test
builds a member with more expiry dates than a balance lists. It then checks a partial
read against the whole book, read by the same store: the balance (available, held,
pending, and the expiring list), the balance after an earn, and `exchange verify`,
including after time has moved past some of the expiry dates.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.clock import FrozenClock
from exchange.db import driver_connection
from exchange.errors import InvariantViolation
from exchange.ledger import Balance, Context, MemberBook, apply_due, balance
from exchange.members import QUALIFYING_WINDOW
from exchange.service import Burn, Earn, LedgerService, OpenHold
from tests.support import add_partner, assert_ledger_verifies, enrol, post

DATES = 9  # distinct expiry dates: more than the five a balance lists


async def _member_with_history(ledger: LedgerService, clock: FrozenClock) -> str:
    """A member whose lots expire on DATES different days (two lots on each of the fifth
    and sixth, either side of the five dates a balance lists), plus one lot still
    pending."""
    await add_partner(ledger.engine, clock)
    member = await enrol(ledger, "grocer")
    now = clock.now()
    for day in range(1, DATES + 1):
        for copy in range(2 if day in (5, 6) else 1):
            await post(
                ledger,
                Earn("grocer", member, f"d{day}-{copy}", points=day * 10,
                     expires_at=now + timedelta(days=day * 30)),
            )  # fmt: skip
    await post(
        ledger,
        Earn("grocer", member, "pending", points=7, available_at=now + timedelta(days=2)),
    )
    return member


def _context(now: datetime, closed_until: datetime) -> Context:
    return Context(
        now=now, closed_until=closed_until, points_ttl=timedelta(days=1095), ids=uuid.uuid4
    )


async def _book(engine: AsyncEngine, member: str, due_by: datetime | None) -> MemberBook:
    async with driver_connection(engine) as conn:
        loaded = await store.read_book(conn, member, due_by=due_by)
    assert loaded is not None
    return loaded[0]


async def _whole_balance(engine: AsyncEngine, member: str, now: datetime) -> Balance:
    """The balance as every read computed it before partial books: from the whole book."""
    async with driver_connection(engine) as conn:
        loaded = await store.read_book(conn, member)
    assert loaded is not None
    book, closed_until = loaded
    assert book.unloaded == 0
    apply_due(book, _context(now, closed_until))
    return balance(book, now)


async def test_a_read_loads_what_it_lists_and_answers_as_the_whole_book_does(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    whole = await _book(engine, member, None)
    partial = await _book(engine, member, clock.now())
    # Only the pending lot is loaded. The eleven matured lots are left out, and their
    # points counted: in all, and on their five soonest dates (two lots on the fifth).
    assert (len(partial.lots), len(whole.lots) - len(partial.lots)) == (1, DATES + 2)
    assert partial.unloaded == sum(lot.remaining for lot in whole.lots.values() if lot.matured)
    start = clock.now()
    assert partial.unloaded_expiring == {
        start + timedelta(days=30 * day): day * 10 * (2 if day == 5 else 1) for day in range(1, 6)
    }

    read = await ledger.read_balance(member)
    assert read == await _whole_balance(engine, member, clock.now())
    assert len(read.expiring) == 5
    assert read.available == sum(day * 10 for day in range(1, DATES + 1)) + 50 + 60


async def test_an_earn_on_a_partial_book_stores_the_whole_books_balance_and_verifies(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    clock.advance(timedelta(days=95))  # dates 1-3 fall due: expired by the earn
    answer = await post(ledger, Earn("grocer", member, "later", points=1))
    truth = await _whole_balance(engine, member, clock.now())
    after = answer["balance_after"]
    assert (after["available"], after["held"], after["pending"]) == (
        truth.available,
        truth.held,
        truth.pending,
    )
    assert truth.available == sum(day * 10 for day in range(4, DATES + 1)) + 50 + 60 + 7 + 1
    assert await ledger.read_balance(member) == truth
    await assert_ledger_verifies(engine)


async def test_a_member_with_an_open_hold_reads_whole_books(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    assert (await _book(engine, member, clock.now())).unloaded > 0
    await post(ledger, OpenHold("grocer", member, 5, "hold"))
    held = await _book(engine, member, clock.now())
    assert held.unloaded == 0
    assert len(held.lots) == len((await _book(engine, member, None)).lots)
    assert await ledger.read_balance(member) == await _whole_balance(engine, member, clock.now())


async def test_a_burn_draws_on_the_whole_book_in_spending_order(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    everything = (await ledger.read_balance(member)).available
    await post(ledger, Burn("grocer", member, everything, "all"))
    read = await ledger.read_balance(member)
    assert (read.available, read.pending) == (0, 7)
    assert read == await _whole_balance(engine, member, clock.now())
    await assert_ledger_verifies(engine)


async def test_a_members_own_balance_reads_a_partial_book_with_the_same_answer(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    now = clock.now()
    async with driver_connection(engine) as conn:
        partial, _ = await store.read_books_with_qualifying(
            conn, [(member, None)], since=now - QUALIFYING_WINDOW, due_by=now
        )
        whole, _ = await store.read_books_with_qualifying(
            conn, [(member, None)], since=now - QUALIFYING_WINDOW, due_by=None
        )
    book, closed_until, _ = partial[(member, None)]
    assert book.unloaded > 0
    apply_due(book, _context(now, closed_until))
    assert balance(book, now) == await _whole_balance(engine, member, now)
    assert whole[(member, None)][0].unloaded == 0


class _SlowLocks(FrozenClock):
    """A clock that moves 200 days between the claim and the rules: as if the batch had
    waited that long for its locks, past the moment its partial books were read for."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.calls = 0

    def now(self) -> datetime:
        self.calls += 1
        if self.calls == 2:  # the claim read the clock first, the rules read it now
            self.advance(timedelta(days=200))
        return super().now()


async def test_rules_that_run_after_the_partial_books_moment_read_the_books_whole(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_history(ledger, clock)
    slow = _SlowLocks(clock.now())
    late = LedgerService(engine, slow, points_ttl=ledger.points_ttl)
    answer = await post(late, Earn("grocer", member, "after the wait", points=1))
    # The rules ran at +200 days: dates 1-6 had expired, including lots a partial book for
    # the claim's moment left out. Only the whole book expires them all.
    truth = await _whole_balance(engine, member, slow.now())
    assert answer["balance_after"]["available"] == truth.available
    assert truth.available == sum(day * 10 for day in range(7, DATES + 1)) + 7 + 1
    await assert_ledger_verifies(engine)


def test_a_rule_that_draws_on_lots_refuses_a_partial_book(clock: FrozenClock) -> None:
    book = MemberBook(member_id="mem_1", debt=0, unloaded=10)
    with pytest.raises(InvariantViolation, match="partial"):
        book.spendable(clock.now())
