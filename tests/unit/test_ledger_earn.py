"""Earning: a new lot per earn, pending and promotional dates, the credit limit, and
debt repaid first. Pure: no database, each rule run on a book written as a table."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from exchange.errors import CreditLimitExceeded, CurrencyNotSupported, Unprocessable
from exchange.ledger import (
    POINTS_PER_REQUEST_MAX,
    Account,
    AllocationKind,
    Entry,
    PartnerState,
    PostingType,
    points_for_purchase,
)
from tests.unit.books import MEMBER, NOW, TTL, Ledger, terms


def test_an_earn_is_a_new_available_lot_issued_by_the_partner() -> None:
    ledger = Ledger()
    effect = ledger.earn("grocer", 100, lot="a")
    posting = effect.posting
    assert (posting.type, posting.points, posting.partner_id) == (PostingType.EARN, 100, "grocer")
    assert posting.entries == (
        Entry(Account.ISSUED, "grocer", -100),
        Entry(Account.AVAILABLE, MEMBER, 100),
    )
    assert (posting.unit_price, posting.currency) == (Decimal("0.012"), "EUR")
    assert (effect.hold, effect.primary, effect.postings) == (None, posting, (posting,))
    lot = ledger.lot("a")
    assert (lot.remaining, lot.issuer_id, lot.expires_at, lot.matured) == (
        100,
        "grocer",
        NOW + TTL,
        True,
    )
    assert ledger.balance().available == 100
    assert ledger.partner("grocer").exposure_added == Decimal("1.200")


def test_a_pending_earn_is_not_spendable_until_it_matures() -> None:
    """Invalid becoming valid: the same burn is refused before `available_at`, then works."""
    ledger = Ledger()
    effect = ledger.earn("grocer", 50, lot="a", available="now+2d")
    assert effect.posting.entries[1] == Entry(Account.PENDING, MEMBER, 50)
    assert effect.posting.available_at == NOW + timedelta(days=2)
    balance = ledger.balance()
    assert (balance.available, balance.pending) == (0, 50)
    error = ledger.refused(lambda: ledger.burn("grocer", 10))
    assert error.code == "insufficient_points"

    ledger.now += timedelta(days=2)
    [matured] = ledger.settle()
    assert (matured.type, matured.points, matured.posted_at) == (
        PostingType.MATURATION,
        50,
        NOW + timedelta(days=2),
    )
    assert ledger.burn("grocer", 10).posting.points == 10
    assert ledger.remaining() == {"a": 40}


def test_a_promotional_expiry_expires_the_lot_on_its_date() -> None:
    ledger = Ledger()
    ledger.earn("grocer", 30, lot="promo", expires="now+30d")
    ledger.earn("grocer", 20, lot="plain")
    ledger.now += timedelta(days=30)
    [expired] = ledger.settle()
    assert (expired.type, expired.points, expired.posted_at) == (
        PostingType.EXPIRY,
        30,
        NOW + timedelta(days=30),
    )
    assert expired.entries == (
        Entry(Account.AVAILABLE, MEMBER, -30),
        Entry(Account.BREAKAGE, "grocer", 30),
    )
    assert ledger.remaining() == {"promo": 0, "plain": 20}
    assert ledger.balance().available == 20


@pytest.mark.parametrize(
    ("available", "expires", "message"),
    [
        (None, "now", "expires_at must be later than available_at"),
        ("now+5d", "now+5d", "expires_at must be later than available_at"),
        (None, "now+1096d", "may not be later than the coalition default"),
        ("now+1095d", None, "available_at must be before the points' default expiry"),
    ],
)
def test_impossible_dates_are_refused(
    available: str | None, expires: str | None, message: str
) -> None:
    ledger = Ledger("lot issuer points expires\na grocer 10 now+1d")
    error = ledger.refused(lambda: ledger.earn("grocer", 10, available=available, expires=expires))
    assert isinstance(error, Unprocessable)
    assert error.code == "validation_error"
    assert message in str(error)


def test_an_available_at_in_the_past_means_available_now() -> None:
    ledger = Ledger()
    effect = ledger.earn("grocer", 10, lot="a", available="now-1d")
    assert (effect.posting.available_at, ledger.lot("a").matured) == (NOW, True)


def test_an_earn_is_refused_once_it_would_pass_the_credit_limit() -> None:
    """Valid becoming invalid: the batch's own issuance counts towards the limit."""
    limited = terms("grocer", credit_limit=Decimal("1.20"), exposure=Decimal("0.60"))
    ledger = Ledger(partners={"grocer": PartnerState(limited)})
    ledger.earn("grocer", 50)  # 0.60 + 50 x 0.012 = 1.20: at the limit, allowed
    error = ledger.refused(lambda: ledger.earn("grocer", 1))
    assert isinstance(error, CreditLimitExceeded)
    assert error.code == "credit_limit_exceeded"
    assert "1.212" in str(error)
    assert ledger.partner("grocer").exposure_added == Decimal("0.600")


def test_later_earns_repay_a_negative_balance_first() -> None:
    ledger = Ledger(debt=30)
    first = ledger.earn("grocer", 20, lot="a")
    assert ledger.lot_names(first.posting, AllocationKind.REPAY) == [("a", 20)]
    assert (ledger.book.debt, ledger.balance().available) == (10, -10)
    second = ledger.earn("fuel", 100, lot="b")
    assert ledger.lot_names(second.posting, AllocationKind.REPAY) == [("b", 10)]
    assert (ledger.book.debt, ledger.balance().available) == (0, 90)
    assert ledger.remaining() == {"a": 0, "b": 90}


def test_a_pending_earn_repays_the_debt_when_it_matures() -> None:
    ledger = Ledger(debt=30)
    effect = ledger.earn("grocer", 100, lot="a", available="now+1d")
    assert effect.posting.allocations == ()
    balance = ledger.balance()
    assert (balance.available, balance.pending, ledger.book.debt) == (-30, 100, 30)
    ledger.now += timedelta(days=1)
    [matured] = ledger.settle()
    assert ledger.lot_names(matured, AllocationKind.REPAY) == [("a", 30)]
    assert (ledger.book.debt, ledger.balance().available, ledger.remaining()) == (0, 70, {"a": 70})


RATES = {"EUR": Decimal(1), "GBP": Decimal("1.5")}


@pytest.mark.parametrize(
    ("amount", "currency", "points"),
    [("10.99", "EUR", 10), ("1", "EUR", 1), ("3", "GBP", 4), ("0.67", "GBP", 1)],
)
def test_points_for_a_purchase_are_floored(amount: str, currency: str, points: int) -> None:
    grocer = terms("grocer", earn_rates=RATES)
    assert points_for_purchase(Decimal(amount), currency, grocer) == points


def test_a_purchase_earning_nothing_too_much_or_in_an_unrated_currency_is_refused() -> None:
    grocer = terms("grocer", earn_rates=RATES)
    with pytest.raises(Unprocessable, match="earns no points"):
        points_for_purchase(Decimal("0.999"), "EUR", grocer)
    with pytest.raises(CurrencyNotSupported, match="rates exist for: EUR, GBP"):
        points_for_purchase(Decimal(10), "USD", grocer)
    with pytest.raises(Unprocessable, match=f"at most {POINTS_PER_REQUEST_MAX}"):
        points_for_purchase(Decimal(POINTS_PER_REQUEST_MAX + 1), "EUR", grocer)
