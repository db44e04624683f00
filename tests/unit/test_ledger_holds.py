"""Holds: open, capture (whole or part), void, expiry. Pure: no database, each rule run
on a book written as a table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from exchange.errors import HoldNotOpen, InsufficientPoints, Unprocessable
from exchange.ledger import (
    HOLD_EXPIRES_IN_S_MAX,
    Account,
    AllocationKind,
    Entry,
    HoldStatus,
    PostingType,
)
from tests.unit.books import MEMBER, NOW, Ledger

BOOK = """
    lot  issuer  points  created  expires
    a    grocer  100     now-2d   now+20d
    b    fuel    50      now-1d   now+10d
"""


def _held(points: int = 70, **kw: int) -> Ledger:
    ledger = Ledger(BOOK)
    ledger.open_hold("cinema", points, hold="h", **kw)
    return ledger


def test_a_hold_reserves_the_soonest_expiring_points() -> None:
    ledger = Ledger(BOOK)
    effect = ledger.open_hold("cinema", 70, hold="h")
    hold = ledger.hold("h")
    assert (effect.hold, effect.primary) == (hold, hold)
    assert (hold.status, hold.points, hold.expires_at) == (
        HoldStatus.OPEN,
        70,
        NOW + timedelta(seconds=900),
    )
    posting = effect.posting
    assert (posting.type, posting.hold_id) == (PostingType.HOLD, hold.hold_id)
    assert posting.entries == (
        Entry(Account.AVAILABLE, MEMBER, -70),
        Entry(Account.HELD, MEMBER, 70),
    )
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("b", 50), ("a", 20)]
    assert ledger.remaining() == {"a": 80, "b": 0}
    balance = ledger.balance()
    assert (balance.available, balance.held) == (80, 70)


def test_held_points_cannot_be_burned_or_held_again() -> None:
    ledger = _held()
    assert str(ledger.refused(lambda: ledger.burn("grocer", 81))) == (
        "80 points available, 81 asked."
    )
    error = ledger.refused(lambda: ledger.open_hold("grocer", 81))
    assert isinstance(error, InsufficientPoints)


@pytest.mark.parametrize("expires_in_s", [0, HOLD_EXPIRES_IN_S_MAX + 1])
def test_a_hold_lasts_at_least_a_second_and_at_most_a_week(expires_in_s: int) -> None:
    ledger = Ledger(BOOK)
    error = ledger.refused(lambda: ledger.open_hold("cinema", 1, expires_in_s=expires_in_s))
    assert error.code == "validation_error"
    assert "expires_in must be between 1 and 604800 seconds" in str(error)


def test_capturing_a_whole_hold_burns_what_it_reserved() -> None:
    ledger = _held()
    effect = ledger.capture("h")
    hold, posting = ledger.hold("h"), effect.posting
    assert (effect.hold, effect.postings) == (hold, (posting,))
    assert (hold.status, hold.captured_points, hold.transaction_id, hold.closed_at) == (
        HoldStatus.CAPTURED,
        70,
        posting.posting_id,
        NOW,
    )
    assert (posting.type, posting.points, posting.hold_id) == (PostingType.BURN, 70, hold.hold_id)
    assert posting.entries == (
        Entry(Account.HELD, MEMBER, -70),
        Entry(Account.REDEEMED, "cinema", 70),
    )
    assert ledger.lot_names(posting, AllocationKind.RELEASE) == [("b", 50), ("a", 20)]
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("b", 50), ("a", 20)]
    assert ledger.remaining() == {"a": 80, "b": 0}
    balance = ledger.balance()
    assert (balance.available, balance.held) == (80, 0)


def test_a_partial_capture_burns_in_the_hold_order_and_returns_the_rest() -> None:
    ledger = _held()
    posting = ledger.capture("h", 30).posting
    assert posting.entries == (
        Entry(Account.HELD, MEMBER, -70),
        Entry(Account.REDEEMED, "cinema", 30),
        Entry(Account.AVAILABLE, MEMBER, 40),
    )
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("b", 30)]
    assert ledger.remaining() == {"a": 100, "b": 20}
    assert ledger.hold("h").captured_points == 30
    assert ledger.balance().available == 120


def test_capturing_more_than_the_hold_is_refused() -> None:
    ledger = _held()
    error = ledger.refused(lambda: ledger.capture("h", 71))
    assert isinstance(error, Unprocessable)
    assert str(error) == "Cannot capture 71 points of a 70-point hold."


def test_voiding_returns_the_points_to_their_lots() -> None:
    ledger = _held()
    effect = ledger.void("h")
    hold = ledger.hold("h")
    assert (effect.hold, hold.status, hold.closed_at) == (hold, HoldStatus.VOIDED, NOW)
    assert effect.posting.type is PostingType.HOLD_RELEASE
    assert effect.posting.entries == (
        Entry(Account.HELD, MEMBER, -70),
        Entry(Account.AVAILABLE, MEMBER, 70),
    )
    assert ledger.remaining() == {"a": 100, "b": 50}


@pytest.mark.parametrize(
    ("close", "status"), [("capture", "captured"), ("void", "voided")], ids=["captured", "voided"]
)
def test_a_closed_hold_cannot_be_captured_or_voided_again(close: str, status: str) -> None:
    ledger = _held()
    getattr(ledger, close)("h")
    for again in (lambda: ledger.capture("h"), lambda: ledger.void("h")):
        error = ledger.refused(again)
        assert isinstance(error, HoldNotOpen)
        assert (error.code, error.status, str(error)) == (
            "hold_not_open",
            409,
            f"Hold is {status}.",
        )


def test_a_hold_is_capturable_until_it_expires() -> None:
    """Valid becoming invalid: a second before its expiry the capture works; at its expiry
    the points go back to the member and the capture is refused."""
    before, after = _held(), _held()
    before.now += timedelta(seconds=899)
    assert before.capture("h").posting.points == 70

    after.now += timedelta(seconds=900)
    error = after.refused(lambda: after.capture("h"))
    assert (error.code, str(error)) == ("hold_not_open", "Hold is expired.")
    release = after.book.postings[-1]
    assert (release.type, release.points, release.posted_at) == (
        PostingType.HOLD_RELEASE,
        70,
        NOW + timedelta(seconds=900),
    )
    assert (after.hold("h").status, after.remaining()) == (
        HoldStatus.EXPIRED,
        {"a": 100, "b": 50},
    )


def test_points_released_to_a_lot_that_has_expired_expire_at_once() -> None:
    ledger = Ledger(
        """
        lot  issuer  points  created  expires
        a    grocer  100     now-2d   now+20d
        s    fuel    30      now-1d   now+10m
        """
    )
    ledger.open_hold("cinema", 40, hold="h", expires_in_s=3600)  # s 30, a 10
    ledger.now += timedelta(minutes=20)  # s has expired while its points were held
    assert ledger.settle() == []  # nothing of s was left to expire
    effect = ledger.void("h")
    assert [(p.type, p.points) for p in effect.postings] == [
        (PostingType.HOLD_RELEASE, 40),
        (PostingType.EXPIRY, 30),
    ]
    assert effect.postings[1].entries[1] == Entry(Account.BREAKAGE, "fuel", 30)
    assert ledger.remaining() == {"a": 100, "s": 0}
    assert ledger.balance().available == 100


def test_an_open_hold_from_the_table_is_captured_from_its_own_lots() -> None:
    """Points of the same lot that the hold never reserved are not the hold's to spend."""
    ledger = Ledger(
        """
        lot  issuer  points  remaining  expires
        a    grocer  100     60         now+20d
        """,
        """
        hold  partner  points  expires  draws
        h     cinema   40      now+1h   a:40
        """,
    )
    posting = ledger.capture("h", 25).posting
    assert ledger.lot_names(posting, AllocationKind.DRAW) == [("a", 25)]
    assert ledger.remaining() == {"a": 75}
    assert ledger.balance().available == 75
