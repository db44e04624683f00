"""Wire structs of settlement (contract §6): runs, statements, the liabilities report.

Money is always `{"amount": "12.34", "currency": "EUR"}` with exactly the currency's
decimals; the exact, unrounded sums behind a line are decimal strings in `exact`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from exchange.schemas import MoneyOut

__all__ = [
    "Ageing",
    "AgeingBucket",
    "Checks",
    "Controls",
    "CrossBrand",
    "CurrencyTotal",
    "ExactAmounts",
    "LiabilityReconciliation",
    "LiabilityReport",
    "PartnerLiability",
    "Run",
    "RunPage",
    "RunSummary",
    "SettlementCreate",
    "SettlementLineOut",
    "Statement",
]

Direction = Literal["partner_pays", "operator_pays", "none"]


class _Out(msgspec.Struct, frozen=True):
    """Base of response bodies."""


class SettlementCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    period_end: Annotated[datetime, msgspec.Meta(tz=True)]


class ExactAmounts(_Out, frozen=True):
    """The sums before rounding (up to 6 decimals): what the rounded money came from."""

    issuance_charge: str
    redemption_credit: str
    net: str
    expired_value: str = "0"


class SettlementLineOut(_Out, frozen=True):
    partner_id: str
    partner_name: str
    currency: str
    issued_points: int
    redeemed_points: int
    expired_points: int
    earned_points: int
    earn_reversed_points: int
    burned_points: int
    burn_reversed_points: int
    issuance_charge: MoneyOut
    redemption_credit: MoneyOut
    net: MoneyOut
    direction: Direction
    exact: ExactAmounts
    # Breakage at the prices the expired points were issued at (the operator keeps it).
    expired_value: MoneyOut | None = None
    # net - (issuance_charge - redemption_credit): each amount is rounded once from its
    # exact sum, so this is at most one minor unit either way; with it every line foots.
    rounding_difference: MoneyOut | None = None
    final: bool = False  # the partner was terminated in this period: its last line


class CrossBrand(_Out, frozen=True):
    issuer_id: str
    redeemer_id: str
    points: int


class Checks(_Out, frozen=True):
    conservation: bool
    partner_accounts: bool
    cross_brand: bool
    continuity: bool


class Controls(_Out, frozen=True):
    issued: int
    redeemed: int
    expired: int
    reversed: int
    earn_reversed: int
    burn_reversed: int
    outstanding_start: int
    outstanding_end: int
    checks: Checks
    adjusted: int = 0  # operator adjustments: + credited to members, - debited


class RunSummary(_Out, frozen=True):
    run_id: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    created_by: str
    reconciled: bool
    controls: Controls
    # Contract §8: "computed" when stored, "approved" once finance approved it.
    status: Literal["computed", "approved"] = "computed"
    approved_by: str | None = None
    approved_at: datetime | None = None


class Run(_Out, frozen=True):
    run_id: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    created_by: str
    reconciled: bool
    lines: list[SettlementLineOut]
    cross_brand: list[CrossBrand]
    controls: Controls
    # Contract §8: "computed" when stored, "approved" once finance approved it.
    status: Literal["computed", "approved"] = "computed"
    approved_by: str | None = None
    approved_at: datetime | None = None


class RunPage(_Out, frozen=True):
    items: list[RunSummary]
    next: str | None


class Statement(_Out, frozen=True):
    """A partner's own view of a run: its line and the flows it takes part in."""

    run_id: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    reconciled: bool
    partner_id: str
    line: SettlementLineOut
    cross_brand: list[CrossBrand]
    # Contract §8: "computed" when stored, "approved" once finance approved it.
    status: Literal["computed", "approved"] = "computed"
    approved_by: str | None = None
    approved_at: datetime | None = None


class AgeingBucket(_Out, frozen=True):
    points: int
    value: MoneyOut


class Ageing(_Out, frozen=True):
    """Outstanding points by when they expire, counted from `as_of`."""

    within_30_days: AgeingBucket
    within_90_days: AgeingBucket
    within_365_days: AgeingBucket
    later: AgeingBucket


class PartnerLiability(_Out, frozen=True):
    partner_id: str
    partner_name: str
    currency: str
    outstanding_points: int
    held_points: int  # of outstanding_points, reserved by open holds
    value: MoneyOut
    value_exact: str
    ageing: Ageing


class CurrencyTotal(_Out, frozen=True):
    currency: str
    outstanding_points: int
    value: MoneyOut


class LiabilityReconciliation(_Out, frozen=True):
    """From the issuers' outstanding points to the members' accounts in the journal:
    member_accounts = outstanding_points + expired_not_yet_swept + held_on_expired_lots
    - member_debt (`ties` says it holds)."""

    outstanding_points: int
    expired_not_yet_swept: int
    held_on_expired_lots: int
    member_debt: int
    member_accounts: int
    ties: bool


class LiabilityReport(_Out, frozen=True, omit_defaults=True):
    as_of: datetime
    partners: list[PartnerLiability]
    totals: list[CurrencyTotal]
    reconciliation: LiabilityReconciliation | None = None
