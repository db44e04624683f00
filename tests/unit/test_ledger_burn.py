"""Burning: soonest-expiring lots first, ties oldest first; refusals leave the book as
it was. Pure: no database, each rule run on a book written as a table."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from exchange.errors import InsufficientPoints
from exchange.ledger import Account, AllocationKind, Entry, PostingType
from tests.unit.books import MEMBER, NOW, Ledger

BOOK = """
    lot  issuer  points  remaining  created  expires
    a    grocer  100     100        now-3d   now+20d
    b    fuel    50      50         now-2d   now+10d
    c    cinema  40      40         now-5d   now+20d
    d    grocer  30      0          now-9d   now+5d
"""


def test_a_burn_draws_the_soonest_expiring_lots_first_ties_oldest_first() -> None:
    ledger = Ledger(BOOK)
    effect = ledger.burn("cinema", 120)
    posting = effect.posting
    # b expires first; a and c expire together and c is older; d is empty.
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("b", 50), ("c", 40), ("a", 30)]
    assert ledger.remaining() == {"a": 70, "b": 0, "c": 0, "d": 0}
    assert posting.entries == (
        Entry(Account.AVAILABLE, MEMBER, -120),
        Entry(Account.REDEEMED, "cinema", 120),
    )
    assert (posting.type, posting.unit_price, posting.currency) == (
        PostingType.BURN,
        Decimal("0.010"),
        "EUR",
    )
    assert effect.postings == (posting,)
    assert ledger.balance().available == 70


def test_lots_created_at_the_same_moment_and_expiring_together_go_in_id_order() -> None:
    ledger = Ledger(
        """
        lot  issuer  points  created  expires
        x    grocer  10      now-1d   now+9d
        y    fuel    10      now-1d   now+9d
        """
    )
    posting = ledger.burn("grocer", 15).posting
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("x", 10), ("y", 5)]


def test_a_burn_of_more_than_is_available_is_refused_and_changes_nothing() -> None:
    ledger = Ledger(BOOK)
    error = ledger.refused(lambda: ledger.burn("cinema", 191))
    assert isinstance(error, InsufficientPoints)
    assert (error.code, error.status) == ("insufficient_points", 422)
    assert str(error) == "190 points available, 191 asked."


def test_a_burn_valid_today_is_refused_once_a_lot_has_expired() -> None:
    """Valid becoming invalid: b's 50 points expire on their date, so 150 is too many."""
    today, later = Ledger(BOOK), Ledger(BOOK)
    assert today.burn("fuel", 150).posting.points == 150
    later.now += timedelta(days=10)
    error = later.refused(lambda: later.burn("fuel", 150))
    assert str(error) == "140 points available, 150 asked."
    expiry = later.book.postings[-1]  # applied before the burn was tried, as on read
    assert (expiry.type, expiry.points, expiry.posted_at, expiry.partner_id) == (
        PostingType.EXPIRY,
        50,
        NOW + timedelta(days=10),
        "fuel",
    )


def test_burns_are_refused_while_the_balance_is_negative() -> None:
    ledger = Ledger(
        """
        lot  issuer  points  available  expires
        p    grocer  100     now+1d     now+30d
        """,
        debt=20,
    )
    error = ledger.refused(lambda: ledger.burn("grocer", 1))
    assert error.code == "insufficient_points"
    assert "negative (-20 points)" in str(error)
    ledger.now += timedelta(days=1)  # p matures and repays the debt: 80 left to burn
    assert ledger.burn("grocer", 80).posting.points == 80
    assert ledger.remaining() == {"p": 0}
