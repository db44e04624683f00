"""The settlement arithmetic and its calendar, pure: no database.

`settle` is fed measured figures directly (the shape `read_period` returns), so each
rule and each reconciliation check is shown with the smallest example that exercises it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from exchange.config import SettlementCycle
from settlement.engine import (
    BEGINNING_OF_TIME,
    CrossBrandFlow,
    JournalAccounts,
    PartnerActivity,
    Period,
    PeriodFigures,
    settle,
)
from settlement.reports import run_csv
from settlement.schedule import boundary_at_or_before, due_boundaries, next_boundary
from settlement.service import run_id_for
from settlement.store import RunHeader, StoredRun

PERIOD = Period(BEGINNING_OF_TIME, datetime(2026, 11, 24, tzinfo=UTC))


def _figures(**changes: object) -> PeriodFigures:
    """Domain.md's worked example, as the journal would measure it."""
    figures = PeriodFigures(
        period=PERIOD,
        activity=(
            PartnerActivity(
                "cinema", "Cinema", "EUR", burned_points=500_000,
                redemption_exact=Decimal("5000.000000"),
            ),
            PartnerActivity(
                "fuel", "Fuel", "EUR", earned_points=400_000, burned_points=200_000,
                issuance_exact=Decimal("4800.000000"), redemption_exact=Decimal("2000.000000"),
            ),
            PartnerActivity(
                "grocer", "Grocer", "EUR", earned_points=1_000_000, burned_points=300_000,
                issuance_exact=Decimal("12000.000000"), redemption_exact=Decimal("3000.000000"),
            ),
        ),
        accounts={
            "cinema": JournalAccounts(0, 500_000, 0),
            "fuel": JournalAccounts(400_000, 200_000, 0),
            "grocer": JournalAccounts(1_000_000, 300_000, 0),
        },
        cross_brand=(
            CrossBrandFlow("fuel", "fuel", 200_000),
            CrossBrandFlow("grocer", "cinema", 500_000),
            CrossBrandFlow("grocer", "grocer", 300_000),
        ),
        outstanding_start=0,
        outstanding_end=400_000,
    )  # fmt: skip
    return replace(figures, **changes)  # type: ignore[arg-type]


def test_the_worked_example() -> None:
    result = settle(_figures(), previous_outstanding_end=None)
    nets = {line.partner_id: line.net for line in result.lines}
    assert nets == {"cinema": Decimal(-5000), "fuel": Decimal(2800), "grocer": Decimal(9000)}
    assert (result.controls.issued, result.controls.redeemed) == (1_400_000, 1_000_000)
    assert result.reconciled


@pytest.mark.parametrize(
    ("points", "price", "rounded"),
    [
        (2, "0.0125", "0.02"),  # 0.025: a tie, to the even cent
        (6, "0.0125", "0.08"),  # 0.075: a tie, to the even cent
        (1, "0.015", "0.02"),
        (3, "0.001", "0.00"),
    ],
)
def test_amounts_round_half_even_once(points: int, price: str, rounded: str) -> None:
    activity = PartnerActivity(
        "p", "P", "EUR", earned_points=points, issuance_exact=points * Decimal(price)
    )
    figures = _figures(
        activity=(activity,),
        accounts={"p": JournalAccounts(points, 0, 0)},
        cross_brand=(),
        outstanding_end=points,
    )
    [line] = settle(figures, previous_outstanding_end=None).lines
    assert line.issuance_charge == Decimal(rounded)
    assert line.net == Decimal(rounded)


def test_net_is_rounded_from_the_exact_difference() -> None:
    activity = PartnerActivity(
        "p", "P", "EUR", earned_points=2, burned_points=2,
        issuance_exact=Decimal("0.025"), redemption_exact=Decimal("0.015"),
    )  # fmt: skip
    figures = _figures(
        activity=(activity,),
        accounts={"p": JournalAccounts(2, 2, 0)},
        cross_brand=(CrossBrandFlow("p", "p", 2),),
        outstanding_end=0,
    )
    [line] = settle(figures, previous_outstanding_end=None).lines
    assert (line.issuance_charge, line.redemption_credit) == (Decimal("0.02"), Decimal("0.02"))
    assert line.net == Decimal("0.01")  # round(0.010), not 0.02 - 0.02


def test_zero_decimal_and_three_decimal_currencies() -> None:
    yen = PartnerActivity("yen", "Yen", "JPY", earned_points=5, issuance_exact=Decimal("2.5"))
    dinar = PartnerActivity("bhd", "Bhd", "BHD", earned_points=5, issuance_exact=Decimal("0.0125"))
    figures = _figures(
        activity=(dinar, yen),
        accounts={"yen": JournalAccounts(5, 0, 0), "bhd": JournalAccounts(5, 0, 0)},
        cross_brand=(),
        outstanding_end=10,
    )
    bhd_line, yen_line = settle(figures, previous_outstanding_end=None).lines
    assert yen_line.issuance_charge == Decimal(2)  # 2.5 -> 2 (even)
    assert bhd_line.issuance_charge == Decimal("0.012")  # 0.0125 -> 0.012 (even)


def test_outstanding_that_does_not_conserve_fails_conservation() -> None:
    result = settle(_figures(outstanding_end=400_001), previous_outstanding_end=None)
    assert result.checks.failed() == ["conservation"]
    assert not result.reconciled


def test_a_line_differing_from_the_journal_fails_partner_accounts() -> None:
    accounts = dict(_figures().accounts) | {"fuel": JournalAccounts(400_000, 199_999, 0)}
    result = settle(_figures(accounts=accounts), previous_outstanding_end=None)
    assert result.checks.failed() == ["partner_accounts"]


def test_journal_movement_of_a_partner_without_a_line_fails_partner_accounts() -> None:
    accounts = dict(_figures().accounts) | {"ghost": JournalAccounts(0, 0, 1)}
    result = settle(_figures(accounts=accounts), previous_outstanding_end=None)
    assert result.checks.failed() == ["partner_accounts"]


def test_a_posting_in_a_foreign_currency_fails_partner_accounts() -> None:
    figures = _figures()
    activity = (replace(figures.activity[0], foreign_postings=1), *figures.activity[1:])
    result = settle(replace(figures, activity=activity), previous_outstanding_end=None)
    assert result.checks.failed() == ["partner_accounts"]


def test_a_matrix_not_adding_up_to_redemptions_fails_cross_brand() -> None:
    flows = (
        CrossBrandFlow("grocer", "cinema", 500_000),
        CrossBrandFlow("grocer", "grocer", 300_000),
    )
    result = settle(_figures(cross_brand=flows), previous_outstanding_end=None)
    assert result.checks.failed() == ["cross_brand"]


def test_a_start_that_differs_from_the_previous_end_fails_continuity() -> None:
    figures = _figures(outstanding_start=10, outstanding_end=400_010)
    assert settle(figures, previous_outstanding_end=10).reconciled
    assert settle(figures, previous_outstanding_end=9).checks.failed() == ["continuity"]


def _reversals_and_breakage(**changes: object) -> PeriodFigures:
    """One partner: 1000 earned at 0.012 and 100 of them returned, 300 burned at 0.010 and
    50 of them refunded (each reversal priced at its original), 200 expired."""
    activity = PartnerActivity(
        "grocer", "Grocer", "EUR",
        earned_points=1000, earn_reversed_points=100, burned_points=300,
        burn_reversed_points=50, expired_points=200,
        issuance_exact=Decimal("12.000") - Decimal("1.200"),
        redemption_exact=Decimal("3.000") - Decimal("0.500"),
    )  # fmt: skip
    figures = PeriodFigures(
        period=PERIOD,
        activity=(activity,),
        accounts={"grocer": JournalAccounts(issued=900, redeemed=250, expired=200)},
        cross_brand=(CrossBrandFlow("grocer", "grocer", 250),),
        outstanding_start=0,
        outstanding_end=900 - 250 - 200,
    )
    return replace(figures, **changes)  # type: ignore[arg-type]


def test_reversals_net_out_at_their_original_price_and_breakage_conserves() -> None:
    result = settle(_reversals_and_breakage(), previous_outstanding_end=None)
    [line] = result.lines
    assert (line.issued_points, line.redeemed_points, line.expired_points) == (900, 250, 200)
    assert (line.issuance_charge, line.redemption_credit, line.net) == (
        Decimal("10.80"),
        Decimal("2.50"),
        Decimal("8.30"),
    )
    assert (result.controls.reversed, result.controls.expired) == (150, 200)
    assert result.reconciled


def test_breakage_left_out_of_outstanding_fails_conservation() -> None:
    """Valid until the expired points are (wrongly) still counted as outstanding."""
    figures = _reversals_and_breakage(outstanding_end=900 - 250)
    assert settle(figures, previous_outstanding_end=None).checks.failed() == ["conservation"]


def test_a_refund_left_out_of_the_matrix_fails_cross_brand() -> None:
    flows = (CrossBrandFlow("grocer", "grocer", 300),)  # the burn, without its refund
    result = settle(_reversals_and_breakage(cross_brand=flows), previous_outstanding_end=None)
    assert result.checks.failed() == ["cross_brand"]


def test_a_partner_without_activity_gets_a_zero_line_and_reconciles() -> None:
    idle = PartnerActivity("idle", "Idle", "GBP")
    figures = _reversals_and_breakage()
    result = settle(
        replace(figures, activity=(*figures.activity, idle)), previous_outstanding_end=None
    )
    zero = result.lines[-1]
    assert (zero.partner_id, zero.currency, zero.net, zero.issued_points) == (
        "idle",
        "GBP",
        Decimal("0.00"),
        0,
    )
    assert result.reconciled


def test_the_first_run_must_start_from_an_empty_ledger() -> None:
    figures = _reversals_and_breakage(outstanding_start=1, outstanding_end=451)
    assert settle(figures, previous_outstanding_end=None).checks.failed() == ["continuity"]


def test_the_same_figures_always_give_the_same_run() -> None:
    first = settle(_figures(), previous_outstanding_end=None)
    assert settle(_figures(), previous_outstanding_end=None) == first


def test_run_ids_name_the_cut_off() -> None:
    assert run_id_for(datetime(2026, 11, 24, tzinfo=UTC)) == "stl_20261124T000000Z"
    assert run_id_for(datetime(2026, 11, 24, 1, 2, 3, 4500, tzinfo=UTC)) == (
        "stl_20261124T010203.004500Z"
    )


def test_csv_neutralises_formulas_in_names_and_flags_every_row() -> None:
    figures = _figures()
    activity = (replace(figures.activity[0], partner_name="=HYPERLINK(1)"), *figures.activity[1:])
    result = settle(replace(figures, activity=activity), previous_outstanding_end=None)
    header = RunHeader(
        "stl_x", PERIOD.start, PERIOD.end, PERIOD.end, "test", result.controls, result.checks
    )
    rows = run_csv(StoredRun(header, result)).splitlines()
    assert rows[0].startswith("run_id,period_start,period_end,reconciled,partner_id")
    assert rows[1].split(",")[5] == "'=HYPERLINK(1)"
    assert [row.split(",")[3] for row in rows[1:]] == ["true"] * 3


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("cycle", "moment", "floor", "following"),
    [
        ("daily", "2026-11-23T10:00", "2026-11-23T00:00", "2026-11-24T00:00"),
        ("daily", "2026-11-24T00:00", "2026-11-24T00:00", "2026-11-25T00:00"),
        ("daily", "2026-12-31T23:59", "2026-12-31T00:00", "2027-01-01T00:00"),
        ("weekly", "2026-11-23T10:00", "2026-11-23T00:00", "2026-11-30T00:00"),  # a Monday
        ("weekly", "2026-11-29T23:00", "2026-11-23T00:00", "2026-11-30T00:00"),  # Sunday
        ("monthly", "2026-11-23T10:00", "2026-11-01T00:00", "2026-12-01T00:00"),
        ("monthly", "2026-12-01T00:00", "2026-12-01T00:00", "2027-01-01T00:00"),
        ("monthly", "2027-01-31T12:00", "2027-01-01T00:00", "2027-02-01T00:00"),
    ],
)
def test_cycle_boundaries_are_midnight_utc(
    cycle: SettlementCycle, moment: str, floor: str, following: str
) -> None:
    assert boundary_at_or_before(_at(moment), cycle) == _at(floor)
    assert next_boundary(_at(moment), cycle) == _at(following)


def test_due_boundaries_are_oldest_first_and_bounded() -> None:
    after, now = _at("2026-11-20T00:00"), _at("2026-11-23T10:00")
    assert due_boundaries(after, now, "daily") == [
        _at("2026-11-21T00:00"),
        _at("2026-11-22T00:00"),
        _at("2026-11-23T00:00"),
    ]
    assert due_boundaries(after, now, "daily", limit=2) == [
        _at("2026-11-21T00:00"),
        _at("2026-11-22T00:00"),
    ]
    assert due_boundaries(after, now, "weekly") == [_at("2026-11-23T00:00")]
    assert due_boundaries(after, now, "monthly") == []
