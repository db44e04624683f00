"""Closing the month, pure: journal entries and their rounding, payment allocation,
ageing buckets, document drafts and numbers. No database."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.errors import Unprocessable
from exchange.money import round_money
from settlement.documents import PartnerTerms, draft_documents, format_number
from settlement.engine import Line
from settlement.errors import Overpayment
from settlement.journal import ChartOfAccounts, JournalFigures, build_journal, totals
from settlement.payments import OpenItem, allocate
from settlement.receivables import bucket_of

CHART = ChartOfAccounts()


def _line(partner_id: str, issuance: str, redemption: str, currency: str = "EUR") -> Line:
    issuance_exact, redemption_exact = Decimal(issuance), Decimal(redemption)
    net_exact = issuance_exact - redemption_exact
    return Line(
        partner_id=partner_id,
        partner_name=partner_id.title(),
        currency=currency,
        earned_points=1,
        earn_reversed_points=0,
        burned_points=1,
        burn_reversed_points=0,
        expired_points=0,
        issuance_charge_exact=issuance_exact,
        redemption_credit_exact=redemption_exact,
        net_exact=net_exact,
        issuance_charge=round_money(issuance_exact, currency),
        redemption_credit=round_money(redemption_exact, currency),
        net=round_money(net_exact, currency),
    )


def test_a_net_that_rounds_differently_gets_an_explicit_rounding_line() -> None:
    # 0.006 -> 0.01 and 0.004 -> 0.00, but their difference 0.002 -> 0.00: the three
    # amounts, each rounded once, differ by a cent, and the journal says so.
    line = _line("grocer", "0.006", "0.004")
    figures = JournalFigures({"grocer": Decimal("0.0048")}, {})

    entries = build_journal([line], figures, CHART)

    [rounding] = [entry for entry in entries if entry.kind == "rounding"]
    assert [(leg.account, leg.partner_id, leg.debit, leg.credit) for leg in rounding.lines] == [
        ("1200", "grocer", Decimal(0), Decimal("0.01")),
        ("6990", None, Decimal("0.01"), Decimal(0)),
    ]
    receivable = sum(
        leg.debit - leg.credit for e in entries for leg in e.lines if leg.account == "1200"
    )
    assert receivable == line.net == 0
    # issuance 0.01 + rounding 0.01 on each side; the redemption rounds to nothing.
    assert totals(entries) == {"EUR": (Decimal("0.02"), Decimal("0.02"))}


def test_reversals_beyond_postings_swap_the_sides() -> None:
    line = _line("grocer", "-12.00", "0")  # more earn reversals than earns in the period
    [issuance] = build_journal([line], JournalFigures({}, {}), CHART)
    assert [(leg.account, leg.debit, leg.credit) for leg in issuance.lines] == [
        ("1200", Decimal(0), Decimal("12.00")),
        ("2400", Decimal("12.00"), Decimal(0)),
    ]


amounts = st.decimals(min_value=-1000, max_value=100_000, places=6, allow_nan=False)


@settings(max_examples=200, deadline=None)  # pure and fast; no deadline on a busy machine
@given(
    st.lists(st.tuples(amounts, amounts, amounts, amounts), min_size=1, max_size=6),
    st.sampled_from(["EUR", "JPY", "BHD"]),
)
def test_every_journal_balances_per_currency_to_the_minor_unit(
    rows: list[tuple[Decimal, Decimal, Decimal, Decimal]], currency: str
) -> None:
    lines, relief, expired = [], {}, {}
    for index, (issuance, redemption, redeemed_value, expired_value) in enumerate(rows):
        partner = f"p{index}"
        lines.append(_line(partner, str(issuance), str(redemption), currency))
        relief[partner], expired[partner] = redeemed_value, expired_value
    entries = build_journal(lines, JournalFigures(relief, expired), CHART)
    for entry in entries:
        assert sum(leg.debit for leg in entry.lines) == sum(leg.credit for leg in entry.lines)
        for leg in entry.lines:
            assert leg.debit >= 0
            assert leg.credit >= 0
            assert round_money(leg.debit, currency) == leg.debit
    for line in lines:  # each partner's receivable/payable ends at its document's net
        balance = sum(
            leg.debit - leg.credit
            for e in entries
            for leg in e.lines
            if leg.partner_id == line.partner_id
        )
        assert balance == line.net
    debit, credit = totals(entries).get(currency, (Decimal(0), Decimal(0)))
    assert debit == credit


def _item(document_id: str, day: int, amount: str, kind: str = "invoice") -> OpenItem:
    return OpenItem(document_id, f"N-{document_id}", kind, date(2026, 11, day), Decimal(amount))


def test_allocation_settles_the_oldest_documents_of_the_direction_first() -> None:
    items = [
        _item("late", 20, "50.00"),
        _item("credit", 1, "99.00", kind="credit_note"),
        _item("early", 10, "30.00"),
    ]
    allocations = allocate(Decimal("70.00"), items, direction="received", document_id=None)
    assert [(a.document_id, a.amount) for a in allocations] == [
        ("early", Decimal("30.00")),
        ("late", Decimal("40.00")),
    ]
    assert allocate(Decimal("5"), items, direction="paid", document_id=None)[0].document_id == (
        "credit"
    )
    assert allocate(Decimal("5"), [], direction="received", document_id=None) == []


def test_allocation_to_a_named_document_refuses_more_than_is_open() -> None:
    items = [_item("inv", 10, "30.00"), _item("cn", 10, "5.00", kind="credit_note")]
    [exact] = allocate(Decimal("30.00"), items, direction="received", document_id="inv")
    assert exact.amount == Decimal("30.00")
    with pytest.raises(Overpayment):
        allocate(Decimal("30.01"), items, direction="received", document_id="inv")
    with pytest.raises(Overpayment):
        allocate(Decimal("1"), items, direction="received", document_id="paid-already")
    with pytest.raises(Unprocessable):
        allocate(Decimal("1"), items, direction="received", document_id="cn")


BUCKET_CASES = [(-5, "not_due"), (0, "not_due"), (1, "1_30"), (30, "1_30"), (31, "31_60")]
BUCKET_CASES += [(60, "31_60"), (61, "61_90"), (90, "61_90"), (91, "over_90"), (400, "over_90")]


@pytest.mark.parametrize(("days", "bucket"), BUCKET_CASES)
def test_ageing_buckets(days: int, bucket: str) -> None:
    assert bucket_of(days) == bucket


def test_drafts_skip_zero_nets_and_fall_due_after_the_partners_terms() -> None:
    lines = (
        _line("b-fuel", "10", "2"),
        _line("a-cinema", "0", "5"),
        _line("c-idle", "1", "1"),
        _line("a-grocer", "3", "1"),
    )
    terms = {
        "b-fuel": PartnerTerms(30, "reverse charge"),
        "a-cinema": PartnerTerms(14, None),
        "c-idle": PartnerTerms(14, None),
        "a-grocer": PartnerTerms(0, None),
    }
    drafts = draft_documents(lines, terms, date(2026, 12, 31))
    assert [(d.series, d.line.partner_id, d.kind, d.due_date) for d in drafts] == [
        ("CN", "a-cinema", "credit_note", date(2027, 1, 14)),
        ("INV", "a-grocer", "invoice", date(2026, 12, 31)),
        ("INV", "b-fuel", "invoice", date(2027, 1, 30)),
    ]
    assert format_number("INV", 2026, 1) == "INV-2026-000001"
    assert format_number("CN", 2027, 123456) == "CN-2027-123456"
