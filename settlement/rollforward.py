"""The liability roll-forward (contract §8): per issuer, how the points it owes moved
from the start to the end of a settled period, in points and at the prices issued at.

What an issuer owes is measured by its lots: the points its lots still hold plus the
points open holds have reserved from them (a hold can still be voided, so those points
are still in members' hands). Every change to a lot is an allocation or a lot's creation,
and each is classified as exactly one movement, signed (+ increases the liability):

    issued                  + a lot created by an earn
    redeemed                - a burn's draw (captures included); + a refund's release
    expired                 - an expiry's draw (breakage)
    reversed                - an earn reversal's points, all of them (as settlement counts it)
    reversal_shortfall      + the part of an earn reversal its own lot no longer held
                              (already spent): taken from the member's other lots or left
                              as member debt, so it is not this issuer's liability any more
    applied_to_member_debt  - an issuer's points used to cover another issuer's reversal
                              shortfall: drawn at the reversal, or repaying the member's
                              negative balance later
    adjusted                + a lot created by an operator adjustment; - an adjustment's draw
    <posting type>          anything else, under its own name (none exists today)

Hold reservations and their releases (including a capture's release of the reservation)
are not movements: the held points are outstanding until captured or expired.

The two identities the report proves:

- per issuer:    closing = opening + Σ movements, exactly (points and exact values);
- coalition:     Σ closing - member debt = the run's outstanding_end (member accounts in
                 the journal), where member debt = Σ reversal_shortfall + Σ
                 applied_to_member_debt to date; likewise for opening and
                 outstanding_start; and the movements' totals equal the run's controls.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store imports this module: its types only, never at run time
    from settlement.store import RunHeader

__all__ = [
    "MOVEMENTS",
    "Figure",
    "IssuerRollForward",
    "MovementRow",
    "RollForward",
    "RollForwardReport",
    "Ties",
    "report",
    "roll_forward",
    "ties",
]

MOVEMENTS = (
    "issued",
    "redeemed",
    "expired",
    "reversed",
    "reversal_shortfall",
    "applied_to_member_debt",
    "adjusted",
)
# Movements that make up the member debt (points owed by members, not by any issuer).
_DEBT_MOVEMENTS = ("reversal_shortfall", "applied_to_member_debt")
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Figure:
    points: int = 0
    value: Decimal = ZERO  # exact: points x the price each was issued at

    def __add__(self, other: Figure) -> Figure:
        return Figure(self.points + other.points, self.value + other.value)


@dataclass(frozen=True, slots=True)
class MovementRow:
    """One (issuer, movement, before-the-period?) sum from the journal."""

    issuer_id: str
    movement: str
    before_period: bool  # True: before period_start (part of the opening balance)
    points: int
    value: Decimal


@dataclass(frozen=True, slots=True)
class IssuerRollForward:
    issuer_id: str
    issuer_name: str
    currency: str
    opening: Figure
    movements: dict[str, Figure]  # every name in MOVEMENTS, then any others
    closing: Figure


@dataclass(frozen=True, slots=True)
class Ties:
    """The coalition-level checks against the run (all must be True)."""

    opening_to_outstanding_start: bool
    closing_to_outstanding_end: bool
    movements_to_controls: bool

    @property
    def all(self) -> bool:
        return (
            self.opening_to_outstanding_start
            and self.closing_to_outstanding_end
            and self.movements_to_controls
        )


@dataclass(frozen=True, slots=True)
class RollForward:
    issuers: tuple[IssuerRollForward, ...]
    member_debt_opening: int  # points members owed at period_start
    member_debt_closing: int  # ... and at period_end
    totals: dict[str, int] = field(default_factory=dict)  # points per movement, all issuers


# -- the arithmetic (pure) ---------------------------------------------------------------------


def roll_forward(rows: list[MovementRow], issuers: dict[str, tuple[str, str, bool]]) -> RollForward:
    """Opening (everything before the period), the period's movements, closing."""
    opening: dict[str, Figure] = defaultdict(Figure)
    moved: dict[str, dict[str, Figure]] = defaultdict(lambda: defaultdict(Figure))
    debt_opening = debt_closing = 0
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        figure = Figure(row.points, row.value)
        is_debt = row.movement in _DEBT_MOVEMENTS
        debt_closing += row.points if is_debt else 0
        if row.before_period:
            opening[row.issuer_id] += figure
            debt_opening += row.points if is_debt else 0
        else:
            moved[row.issuer_id][row.movement] += figure
            totals[row.movement] += row.points
    shown = sorted(
        issuer
        for issuer, (_, _, always) in issuers.items()
        if always or issuer in opening or issuer in moved
    )
    result = []
    for issuer in shown:
        name, currency, _ = issuers[issuer]
        extra = sorted(set(moved[issuer]) - set(MOVEMENTS))
        movements = {movement: moved[issuer][movement] for movement in (*MOVEMENTS, *extra)}
        closing = sum(movements.values(), opening[issuer])
        result.append(
            IssuerRollForward(issuer, name, currency, opening[issuer], movements, closing)
        )
    # Member debt (points members owe after returns of points they had spent) is the
    # running total of the debt movements: shortfalls raise it, applications lower it.
    return RollForward(tuple(result), debt_opening, debt_closing, dict(totals))


def ties(
    forward: RollForward,
    *,
    outstanding_start: int,
    outstanding_end: int,
    earned: int,
    earn_reversed: int,
    redeemed: int,
    expired: int,
    adjusted: int,
) -> Ties:
    """The roll-forward against the run's control totals (contract §6 and §8)."""
    opening = sum(issuer.opening.points for issuer in forward.issuers)
    closing = sum(issuer.closing.points for issuer in forward.issuers)
    totals = forward.totals
    return Ties(
        opening_to_outstanding_start=opening - forward.member_debt_opening == outstanding_start,
        closing_to_outstanding_end=closing - forward.member_debt_closing == outstanding_end,
        movements_to_controls=(
            totals.get("issued", 0) == earned
            and totals.get("reversed", 0) == -earn_reversed
            and totals.get("redeemed", 0) == -redeemed
            and totals.get("expired", 0) == -expired
            and totals.get("adjusted", 0) == adjusted
        ),
    )


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollForwardReport:
    run_id: str
    period_start: datetime
    period_end: datetime
    reconciled: bool
    outstanding_start: int
    outstanding_end: int
    forward: RollForward
    ties: Ties


def report(
    run: RunHeader, rows: list[MovementRow], issuers: dict[str, tuple[str, str, bool]]
) -> RollForwardReport:
    """The roll-forward of `run` from its movements (`settlement.store.read_movements`, read
    in the same REPEATABLE READ snapshot as the run), tied to the run's control totals."""
    forward = roll_forward(rows, issuers)
    controls = run.controls
    return RollForwardReport(
        run_id=run.run_id,
        period_start=run.period_start,
        period_end=run.period_end,
        reconciled=run.reconciled,
        outstanding_start=controls.outstanding_start,
        outstanding_end=controls.outstanding_end,
        forward=forward,
        ties=ties(
            forward,
            outstanding_start=controls.outstanding_start,
            outstanding_end=controls.outstanding_end,
            earned=controls.issued + controls.earn_reversed,
            earn_reversed=controls.earn_reversed,
            redeemed=controls.redeemed,
            expired=controls.expired,
            adjusted=controls.adjusted,
        ),
    )
