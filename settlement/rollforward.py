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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "MOVEMENTS",
    "Figure",
    "IssuerRollForward",
    "MovementRow",
    "RollForward",
    "RollForwardReport",
    "Ties",
    "load_roll_forward",
    "read_movements",
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


# -- measuring (SQL) ---------------------------------------------------------------------------

# Allocations, classified. An earn reversal's draw on its own lot is covered by `reversed`
# and `reversal_shortfall` below (together: minus what the own lot gave), so it is skipped.
_ALLOCATIONS_SQL = """
SELECT l.issuer_id,
       CASE
         WHEN a.kind = 'repay' THEN 'applied_to_member_debt'
         WHEN p.type = 'burn' AND a.kind = 'draw' THEN 'redeemed'
         WHEN p.type = 'burn_reversal' AND a.kind = 'release' THEN 'redeemed'
         WHEN p.type = 'expiry' AND a.kind = 'draw' THEN 'expired'
         WHEN p.type = 'earn_reversal' AND a.kind = 'draw' THEN 'applied_to_member_debt'
         WHEN p.type = 'adjustment' THEN 'adjusted'
         ELSE p.type
       END AS movement,
       p.posted_at < :start AS before_period,
       sum(CASE WHEN a.kind = 'release' THEN a.points ELSE -a.points END) AS points,
       sum(CASE WHEN a.kind = 'release' THEN a.points ELSE -a.points END * l.unit_price)
           AS value
FROM allocations a
JOIN postings p ON p.posting_id = a.posting_id
JOIN lots l ON l.lot_id = a.lot_id
WHERE p.posted_at < :end
  AND NOT (p.type = 'hold' AND a.kind = 'draw')
  AND NOT (p.type IN ('hold_release', 'burn') AND a.kind = 'release')
  AND NOT (p.type = 'earn_reversal' AND a.kind = 'draw' AND l.earn_id = p.reverses)
GROUP BY 1, 2, 3
UNION ALL
SELECT l.issuer_id, CASE p.type WHEN 'earn' THEN 'issued' ELSE 'adjusted' END,
       p.posted_at < :start, sum(l.initial), sum(l.initial * l.unit_price)
FROM lots l JOIN postings p ON p.posting_id = l.earn_id
WHERE p.posted_at < :end
GROUP BY 1, 2, 3
UNION ALL
SELECT r.partner_id, m.movement, r.posted_at < :start,
       sum(CASE m.movement WHEN 'reversed' THEN -r.points ELSE r.points - coalesce(own.points, 0)
           END),
       sum(CASE m.movement WHEN 'reversed' THEN -r.points ELSE r.points - coalesce(own.points, 0)
           END * r.unit_price)
FROM postings r
CROSS JOIN (VALUES ('reversed'), ('reversal_shortfall')) AS m(movement)
LEFT JOIN LATERAL (
    SELECT sum(a.points) AS points
    FROM allocations a JOIN lots l ON l.lot_id = a.lot_id
    WHERE a.posting_id = r.posting_id AND a.kind = 'draw' AND l.earn_id = r.reverses
) AS own ON true
WHERE r.type = 'earn_reversal' AND r.posted_at < :end
GROUP BY 1, 2, 3"""

_ISSUERS_SQL = """
SELECT partner_id, name, settlement_currency, status, created_at < :end AS existed
FROM partners ORDER BY partner_id"""


async def read_movements(
    conn: AsyncConnection, start: datetime, end: datetime
) -> tuple[list[MovementRow], dict[str, tuple[str, str, bool]]]:
    """Every movement before `end`, split at `start`; and each partner's (name, currency,
    shown-without-movements?). Run it in one REPEATABLE READ snapshot."""
    bounds = {"start": start, "end": end}
    rows = [
        MovementRow(
            row.issuer_id, row.movement, bool(row.before_period), int(row.points), row.value
        )
        for row in await conn.execute(text(_ALLOCATIONS_SQL), bounds)
        if row.points or row.value
    ]
    issuers = {
        row.partner_id: (
            row.name,
            row.settlement_currency,
            bool(row.existed) and row.status != "operator",
        )
        for row in await conn.execute(text(_ISSUERS_SQL), bounds)
    }
    return rows, issuers


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


# -- one consistent read -----------------------------------------------------------------------


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


async def load_roll_forward(conn: AsyncConnection, as_of: datetime) -> RollForwardReport | None:
    """The roll-forward of the run whose period ends at `as_of` (None: no such run). The
    caller opens one REPEATABLE READ database transaction around it."""
    run = (
        await conn.execute(
            text(
                "SELECT run_id, period_start, period_end, reconciled, outstanding_start, "
                "outstanding_end, issued_points, earn_reversed_points, redeemed_points, "
                "expired_points, adjusted_points FROM settlement_runs WHERE period_end = :as_of"
            ),
            {"as_of": as_of},
        )
    ).first()
    if run is None:
        return None
    rows, issuers = await read_movements(conn, run.period_start, run.period_end)
    forward = roll_forward(rows, issuers)
    return RollForwardReport(
        run_id=run.run_id,
        period_start=run.period_start,
        period_end=run.period_end,
        reconciled=run.reconciled,
        outstanding_start=run.outstanding_start,
        outstanding_end=run.outstanding_end,
        forward=forward,
        ties=ties(
            forward,
            outstanding_start=run.outstanding_start,
            outstanding_end=run.outstanding_end,
            earned=run.issued_points + run.earn_reversed_points,
            earn_reversed=run.earn_reversed_points,
            redeemed=run.redeemed_points,
            expired=run.expired_points,
            adjusted=run.adjusted_points,
        ),
    )
