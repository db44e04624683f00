"""The table helper builds the core's model as written (the other ledger tests rely on it)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from exchange.ledger import HoldStatus
from tests.unit.books import MEMBER, NOW, Ledger, terms

BOOK = """
    lot  issuer  points  remaining  created     available  expires           price
    a    grocer  100     60         now-2d      -          2027-01-31        0.011
    b    fuel    50      50         now-1d      now+1d     now+20d           -
"""
HOLDS = """
    hold  partner  points  created  expires  draws
    h     cinema   40      now-1h   now+1h   a:40
"""


def test_lots_and_holds_are_read_as_written() -> None:
    ledger = Ledger(BOOK, HOLDS, debt=0)
    a, b = ledger.lot("a"), ledger.lot("b")
    assert (a.issuer_id, a.initial, a.remaining, a.unit_price) == (
        "grocer",
        100,
        60,
        Decimal("0.011"),
    )
    assert (a.created_at, a.available_at, a.matured) == (NOW - timedelta(days=2),) * 2 + (True,)
    assert a.expires_at.isoformat() == "2027-01-31T00:00:00+00:00"
    assert (b.matured, b.available_at, b.expires_at) == (
        False,
        NOW + timedelta(days=1),
        NOW + timedelta(days=20),
    )
    hold = ledger.hold("h")
    assert (hold.partner_id, hold.points, hold.status, hold.member_id) == (
        "cinema",
        40,
        HoldStatus.OPEN,
        MEMBER,
    )
    assert hold.draws == [(a.lot_id, 40)]
    assert a.lot_id < b.lot_id  # table order is id order: ties break oldest row first


def test_the_balance_of_a_table() -> None:
    balance = Ledger(BOOK, HOLDS).balance()
    assert (balance.available, balance.held, balance.pending) == (60, 40, 50)


def test_a_hold_whose_draws_do_not_add_up_is_a_broken_fixture() -> None:
    with pytest.raises(ValueError, match="do not add up"):
        Ledger(BOOK, HOLDS.replace("a:40", "a:30"))


def test_a_ragged_row_is_a_broken_fixture() -> None:
    with pytest.raises(ValueError, match="does not match the columns"):
        Ledger("lot issuer points expires\na grocer 10")


def test_default_terms_and_a_price_from_the_issuer() -> None:
    assert terms("grocer").issue_price == Decimal("0.012")
    ledger = Ledger("lot issuer points expires\na grocer 10 now+1d")
    assert ledger.lot("a").unit_price == Decimal("0.012")
    assert ledger.lot("a").created_at == NOW - timedelta(days=1)
