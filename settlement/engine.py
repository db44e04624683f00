"""The settlement arithmetic: what each partner owes or is owed for one period. Pure.

`settle` turns a period's measured figures (`PeriodFigures`, which
`settlement.store.read_period` reads from the journal with four set-based queries) into
partner lines, the cross-brand matrix, the control totals and the reconciliation checks.
No database, no clock: the same figures always give the same run, so every rule below is
unit-tested on plain data (tests/unit/test_settlement_engine.py).

The contract's rules (§6), restated as the invariants `settle` keeps:

- A period is `[start, end)` of `posted_at`; a posting counts in the period it was
  stamped in, whatever it reverses (a reversal is priced at its original's price,
  which the ledger copied onto the reversal's `unit_price`).
- issuance_charge, redemption_credit and net are each summed exactly (numeric) and
  rounded ONCE, half-even, to the currency's minor unit; net is rounded from the exact
  difference, never computed from two rounded figures.
- A run is reconciled only if four checks hold: conservation (outstanding_end =
  outstanding_start + issued - redeemed - expired + adjusted, outstanding read from the member
  accounts of the journal), partner accounts (each line equals the journal's
  issued/redeemed/breakage accounts of that partner for the period, in the partner's
  settlement currency), cross-brand (the matrix's columns add up to each redeemer's
  redeemed points) and continuity (outstanding_start equals the previous run's
  outstanding_end, so nothing has changed in a closed period).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from exchange.money import round_money

__all__ = [
    "BEGINNING_OF_TIME",
    "Checks",
    "Controls",
    "CrossBrandFlow",
    "JournalAccounts",
    "Line",
    "PartnerActivity",
    "Period",
    "PeriodFigures",
    "Settlement",
    "settle",
]

# The ledger's journal starts closed until this moment (migration 0002), so no posting
# can be stamped earlier: the first run's period starts here.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive


@dataclass(frozen=True, slots=True)
class PartnerActivity:
    """One partner's settlement postings in the period, summed (points and exact values)."""

    partner_id: str
    partner_name: str
    currency: str  # the partner's settlement currency
    earned_points: int = 0
    earn_reversed_points: int = 0
    burned_points: int = 0
    burn_reversed_points: int = 0
    expired_points: int = 0
    issuance_exact: Decimal = ZERO  # earns x price - earn reversals x original price
    redemption_exact: Decimal = ZERO  # burns x price - burn reversals x original price
    foreign_postings: int = 0  # priced postings in another currency: must be 0
    expired_value_exact: Decimal = ZERO  # expired points x the price they were issued at
    final: bool = False  # terminated within the period: its last line


@dataclass(frozen=True, slots=True)
class JournalAccounts:
    """A partner's journal accounts moved in the period: the figures lines must equal."""

    issued: int = 0  # minus the `issued` account's movement (points issued, net)
    redeemed: int = 0
    expired: int = 0  # the `breakage` account


@dataclass(frozen=True, slots=True)
class CrossBrandFlow:
    issuer_id: str
    redeemer_id: str
    points: int  # burned with the redeemer from the issuer's lots, net of refunds


@dataclass(frozen=True, slots=True)
class PeriodFigures:
    period: Period
    activity: tuple[PartnerActivity, ...]  # sorted by partner_id
    accounts: dict[str, JournalAccounts]
    cross_brand: tuple[CrossBrandFlow, ...]  # sorted by (issuer_id, redeemer_id)
    outstanding_start: int
    outstanding_end: int
    adjusted: int = 0  # operator adjustments' net effect on member accounts


@dataclass(frozen=True, slots=True)
class Line:
    """A partner's settlement for the period, in its settlement currency."""

    partner_id: str
    partner_name: str
    currency: str
    earned_points: int
    earn_reversed_points: int
    burned_points: int
    burn_reversed_points: int
    expired_points: int
    issuance_charge_exact: Decimal
    redemption_credit_exact: Decimal
    net_exact: Decimal
    issuance_charge: Decimal
    redemption_credit: Decimal
    net: Decimal  # > 0: the partner pays the operator; < 0: the operator pays the partner
    expired_value_exact: Decimal = ZERO
    final: bool = False

    @property
    def rounding_difference(self) -> Decimal:
        """net - (issuance_charge - redemption_credit): what rounding each amount once
        left over (at most one minor unit either way), so every line foots."""
        return self.net - (self.issuance_charge - self.redemption_credit)

    @property
    def issued_points(self) -> int:
        return self.earned_points - self.earn_reversed_points

    @property
    def redeemed_points(self) -> int:
        return self.burned_points - self.burn_reversed_points


@dataclass(frozen=True, slots=True)
class Controls:
    issued: int
    redeemed: int
    expired: int
    earn_reversed: int
    burn_reversed: int
    outstanding_start: int
    outstanding_end: int
    adjusted: int = 0  # operator adjustments, + credited to members, - debited

    @property
    def reversed(self) -> int:
        return self.earn_reversed + self.burn_reversed


@dataclass(frozen=True, slots=True)
class Checks:
    conservation: bool
    partner_accounts: bool
    cross_brand: bool
    continuity: bool

    @property
    def reconciled(self) -> bool:
        return self.conservation and self.partner_accounts and self.cross_brand and self.continuity

    def failed(self) -> list[str]:
        return [
            name
            for name in ("conservation", "partner_accounts", "cross_brand", "continuity")
            if not getattr(self, name)
        ]


@dataclass(frozen=True, slots=True)
class Settlement:
    period: Period
    lines: tuple[Line, ...]
    cross_brand: tuple[CrossBrandFlow, ...]
    controls: Controls
    checks: Checks

    @property
    def reconciled(self) -> bool:
        return self.checks.reconciled


# -- the arithmetic (pure) ---------------------------------------------------------------------


def _line(activity: PartnerActivity) -> Line:
    currency = activity.currency
    net_exact = activity.issuance_exact - activity.redemption_exact
    return Line(
        partner_id=activity.partner_id,
        partner_name=activity.partner_name,
        currency=currency,
        earned_points=activity.earned_points,
        earn_reversed_points=activity.earn_reversed_points,
        burned_points=activity.burned_points,
        burn_reversed_points=activity.burn_reversed_points,
        expired_points=activity.expired_points,
        issuance_charge_exact=activity.issuance_exact,
        redemption_credit_exact=activity.redemption_exact,
        net_exact=net_exact,
        # Each amount rounded once, from its exact value.
        issuance_charge=round_money(activity.issuance_exact, currency),
        redemption_credit=round_money(activity.redemption_exact, currency),
        net=round_money(net_exact, currency),
        expired_value_exact=activity.expired_value_exact,
        final=activity.final,
    )


def _accounts_match(figures: PeriodFigures, lines: tuple[Line, ...]) -> bool:
    by_partner = {line.partner_id: line for line in lines}
    if any(owner not in by_partner for owner in figures.accounts):
        return False  # the journal moved a partner account no line accounts for
    if any(activity.foreign_postings for activity in figures.activity):
        return False
    return all(
        figures.accounts.get(line.partner_id, JournalAccounts())
        == JournalAccounts(line.issued_points, line.redeemed_points, line.expired_points)
        for line in lines
    )


def _cross_brand_matches(figures: PeriodFigures, lines: tuple[Line, ...]) -> bool:
    by_redeemer: dict[str, int] = defaultdict(int)
    for flow in figures.cross_brand:
        by_redeemer[flow.redeemer_id] += flow.points
    redeemed = {line.partner_id: line.redeemed_points for line in lines}
    partners = set(by_redeemer) | set(redeemed)
    return all(by_redeemer.get(p, 0) == redeemed.get(p, 0) for p in partners)


def settle(figures: PeriodFigures, *, previous_outstanding_end: int | None) -> Settlement:
    """Lines, matrix, controls and checks for the measured period. `previous_outstanding_end`
    is the previous run's closing figure (None for the first run: the ledger was empty)."""
    lines = tuple(_line(activity) for activity in figures.activity)
    controls = Controls(
        issued=sum(line.issued_points for line in lines),
        redeemed=sum(line.redeemed_points for line in lines),
        expired=sum(line.expired_points for line in lines),
        earn_reversed=sum(line.earn_reversed_points for line in lines),
        burn_reversed=sum(line.burn_reversed_points for line in lines),
        outstanding_start=figures.outstanding_start,
        outstanding_end=figures.outstanding_end,
        adjusted=figures.adjusted,
    )
    checks = Checks(
        conservation=controls.outstanding_end
        == controls.outstanding_start
        + controls.issued
        - controls.redeemed
        - controls.expired
        + controls.adjusted,
        partner_accounts=_accounts_match(figures, lines),
        cross_brand=_cross_brand_matches(figures, lines)
        and sum(flow.points for flow in figures.cross_brand) == controls.redeemed,
        continuity=controls.outstanding_start == (previous_outstanding_end or 0),
    )
    return Settlement(figures.period, lines, figures.cross_brand, controls, checks)
