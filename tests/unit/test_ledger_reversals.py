"""Reversals: an earn taken back (a return, clawing into debt when the points are gone)
and a burn refunded to the lots it drew from, with their original expiry. Pure: no
database, each rule run on a book written as a table."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from exchange.errors import NotReversible, ReversalExceedsOriginal
from exchange.ledger import Account, AllocationKind, Entry, PostingType
from tests.unit.books import MEMBER, NOW, Ledger

BOOK = """
    lot  issuer  points  created  expires
    a    grocer  100     now-2d   now+20d
    b    fuel    50      now-1d   now+10d
"""


def test_an_earn_reversal_takes_the_points_back_from_the_earns_lot() -> None:
    ledger = Ledger()
    earned = ledger.earn("grocer", 100, lot="e")
    effect = ledger.reverse(earned, 40)
    posting = effect.posting
    assert (posting.type, posting.points, posting.reverses) == (
        PostingType.EARN_REVERSAL,
        40,
        earned.posting.posting_id,
    )
    assert posting.entries == (
        Entry(Account.ISSUED, "grocer", 40),
        Entry(Account.AVAILABLE, MEMBER, -40),
    )
    assert posting.unit_price == Decimal("0.012")  # the original's price
    assert ledger.remaining() == {"e": 60}
    assert ledger.partner("grocer").exposure_added == Decimal("0.720")
    assert (effect.hold, effect.postings) == (None, (posting,))


def test_an_earn_reversal_of_a_pending_earn_takes_pending_points() -> None:
    ledger = Ledger()
    earned = ledger.earn("grocer", 100, lot="e", available="now+3d")
    posting = ledger.reverse(earned).posting
    assert posting.entries[1] == Entry(Account.PENDING, MEMBER, -100)
    assert ledger.balance().pending == 0


def test_a_shortfall_comes_from_other_points_then_becomes_a_negative_balance() -> None:
    """The earn's points were spent: its reversal takes what else the member has and
    claws the rest into debt, which later earns repay first and which refuses burns."""
    ledger = Ledger("lot issuer points created expires\ny fuel 50 now-1d now+20d")
    earned = ledger.earn("grocer", 100, lot="e", expires="now+5d")
    ledger.burn("cinema", 120)  # e (sooner) 100, y 20
    posting = ledger.reverse(earned).posting
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("y", 30)]
    assert posting.entries == (
        Entry(Account.ISSUED, "grocer", 100),
        Entry(Account.AVAILABLE, MEMBER, -100),
    )
    assert (ledger.book.debt, ledger.balance().available) == (70, -70)
    assert ledger.refused(lambda: ledger.burn("grocer", 1)).code == "insufficient_points"

    repaid = ledger.earn("cinema", 50, lot="f")
    assert ledger.lot_names(repaid.posting, AllocationKind.REPAY) == [("f", 50)]
    assert (ledger.book.debt, ledger.balance().available) == (20, -20)
    ledger.earn("cinema", 30, lot="g")
    assert (ledger.book.debt, ledger.balance().available) == (0, 10)
    assert ledger.burn("grocer", 10).posting.points == 10


def test_reversals_may_not_exceed_the_original() -> None:
    """Valid becoming invalid: 60 then 50 of a 100-point earn; the rest (40) is fine."""
    ledger = Ledger()
    earned = ledger.earn("grocer", 100)
    ledger.reverse(earned, 60)
    error = ledger.refused(lambda: ledger.reverse(earned, 50))
    assert isinstance(error, ReversalExceedsOriginal)
    assert error.code == "reversal_exceeds_original"
    assert str(error) == (
        "100 points were posted and 60 already reversed; 50 more would exceed the original."
    )
    assert ledger.reverse(earned).posting.points == 40
    assert ledger.refused(lambda: ledger.reverse(earned)).code == "reversal_exceeds_original"


def test_only_earns_and_burns_are_reversible() -> None:
    ledger = Ledger(BOOK)
    held = ledger.open_hold("cinema", 10, hold="h")
    error = ledger.refused(lambda: ledger.reverse(held.posting))
    assert isinstance(error, NotReversible)
    assert (error.code, str(error)) == ("not_reversible", "A hold cannot be reversed.")
    refund = ledger.reverse(ledger.burn("cinema", 5), 5)
    error = ledger.refused(lambda: ledger.reverse(refund))
    assert str(error) == "A burn_reversal cannot be reversed."


def test_a_burn_reversal_returns_points_to_the_lots_drawn_latest_expiring_first() -> None:
    ledger = Ledger(BOOK)
    burned = ledger.burn("cinema", 120)  # b 50, a 70
    first = ledger.reverse(burned, 30).posting
    assert (first.type, first.reverses, first.unit_price) == (
        PostingType.BURN_REVERSAL,
        burned.posting.posting_id,
        Decimal("0.010"),
    )
    assert first.entries == (
        Entry(Account.REDEEMED, "cinema", -30),
        Entry(Account.AVAILABLE, MEMBER, 30),
    )
    assert ledger.lot_names(first, AllocationKind.RELEASE) == [("a", 30)]
    rest = ledger.reverse(burned).posting
    assert ledger.lot_names(rest, AllocationKind.RELEASE) == [("a", 40), ("b", 50)]
    assert ledger.remaining() == {"a": 100, "b": 50}
    assert ledger.lot("b").expires_at == NOW + timedelta(days=10)  # its original expiry


def test_a_refund_to_a_lot_that_has_expired_expires_at_once() -> None:
    ledger = Ledger(BOOK)
    burned = ledger.burn("cinema", 120)
    ledger.now += timedelta(days=11)
    effect = ledger.reverse(burned)
    assert [(p.type, p.points) for p in effect.postings] == [
        (PostingType.BURN_REVERSAL, 120),
        (PostingType.EXPIRY, 50),
    ]
    assert effect.postings[1].entries[1] == Entry(Account.BREAKAGE, "fuel", 50)
    assert (ledger.remaining(), ledger.balance().available) == ({"a": 100, "b": 0}, 100)


def test_a_refund_repays_a_negative_balance_first() -> None:
    ledger = Ledger("lot issuer points created expires\ny fuel 50 now-1d now+20d")
    earned = ledger.earn("grocer", 100, lot="e", expires="now+5d")
    burned = ledger.burn("cinema", 150)  # e 100, y 50
    ledger.reverse(earned)  # nothing left: 100 into debt
    refund = ledger.reverse(burned).posting
    assert ledger.lot_names(refund, AllocationKind.RELEASE) == [("y", 50), ("e", 100)]
    assert ledger.lot_names(refund, AllocationKind.REPAY) == [("e", 100)]
    assert (ledger.book.debt, ledger.balance().available) == (0, 50)
    assert ledger.remaining() == {"y": 50, "e": 0}
