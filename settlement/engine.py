"""The settlement arithmetic: what each partner owes or is owed for one period.

Two halves:

- `read_period` measures a period of the journal with four set-based queries (GROUP BY
  over postings, entries and allocations, in whatever database snapshot the caller
  opened); nothing is loaded posting by posting.
- `settle` turns those figures into partner lines, the cross-brand matrix and the
  control totals. Pure and deterministic: the same figures always give the same run.

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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.money import round_money

__all__ = [
    "BEGINNING_OF_TIME",
    "SETTLEMENT_WORK_MEM_MB",
    "Checks",
    "Controls",
    "CrossBrandFlow",
    "JournalAccounts",
    "Line",
    "PartnerActivity",
    "Period",
    "PeriodFigures",
    "Settlement",
    "read_period",
    "settle",
]

# The ledger's journal starts closed until this moment (migration 0002), so no posting
# can be stamped earlier: the first run's period starts here.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
SETTLEMENT_WORK_MEM_MB = 64
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


# -- measuring a period (SQL) ------------------------------------------------------------------

# Every partner that existed before the period ended gets a line (zeros included, so a
# finance team sees the whole coalition); a partner with postings always does.
_ACTIVITY_SQL = """
WITH activity AS (
    SELECT partner_id,
           coalesce(sum(points) FILTER (WHERE type = 'earn'), 0) AS earned,
           coalesce(sum(points) FILTER (WHERE type = 'earn_reversal'), 0) AS earn_reversed,
           coalesce(sum(points) FILTER (WHERE type = 'burn'), 0) AS burned,
           coalesce(sum(points) FILTER (WHERE type = 'burn_reversal'), 0) AS burn_reversed,
           coalesce(sum(points) FILTER (WHERE type = 'expiry'), 0) AS expired,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'earn'), 0)
             - coalesce(sum(points * unit_price) FILTER (WHERE type = 'earn_reversal'), 0)
               AS issuance_exact,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'burn'), 0)
             - coalesce(sum(points * unit_price) FILTER (WHERE type = 'burn_reversal'), 0)
               AS redemption_exact,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'expiry'), 0)
               AS expired_value_exact,
           min(currency) FILTER (WHERE type <> 'expiry') AS currency_min,
           max(currency) FILTER (WHERE type <> 'expiry') AS currency_max
    FROM postings
    WHERE posted_at >= :start AND posted_at < :end
      AND type IN ('earn', 'earn_reversal', 'burn', 'burn_reversal', 'expiry')
    GROUP BY partner_id)
SELECT p.partner_id, p.name, p.settlement_currency,
       coalesce(a.earned, 0) AS earned, coalesce(a.earn_reversed, 0) AS earn_reversed,
       coalesce(a.burned, 0) AS burned, coalesce(a.burn_reversed, 0) AS burn_reversed,
       coalesce(a.expired, 0) AS expired,
       coalesce(a.issuance_exact, 0) AS issuance_exact,
       coalesce(a.redemption_exact, 0) AS redemption_exact,
       coalesce(a.expired_value_exact, 0) AS expired_value_exact,
       a.currency_min, a.currency_max,
       coalesce(p.terminated_at >= :start AND p.terminated_at < :end, false) AS final
FROM partners p LEFT JOIN activity a ON a.partner_id = p.partner_id
WHERE (p.created_at < :end AND p.status <> 'operator') OR a.partner_id IS NOT NULL
ORDER BY p.partner_id"""

_ACCOUNTS_SQL = """
SELECT owner,
       -coalesce(sum(amount) FILTER (WHERE account = 'issued'), 0) AS issued,
       coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) AS redeemed,
       coalesce(sum(amount) FILTER (WHERE account = 'breakage'), 0) AS expired
FROM entries
WHERE posted_at >= :start AND posted_at < :end
  AND account IN ('issued', 'redeemed', 'breakage')
GROUP BY owner"""

# Burns draw points from lots (the lot knows its issuer); a burn reversal releases them
# back to the same lots. Captured holds are burns too; their `release` allocations undo
# the hold's reservation and are not redemptions, so only `draw` counts for burns.
_CROSS_BRAND_SQL = """
SELECT l.issuer_id, p.partner_id AS redeemer_id,
       sum(CASE WHEN p.type = 'burn' THEN a.points ELSE -a.points END) AS points
FROM postings p
JOIN allocations a ON a.posting_id = p.posting_id
JOIN lots l ON l.lot_id = a.lot_id
WHERE p.posted_at >= :start AND p.posted_at < :end
  AND ((p.type = 'burn' AND a.kind = 'draw') OR (p.type = 'burn_reversal' AND a.kind = 'release'))
GROUP BY l.issuer_id, p.partner_id
HAVING sum(CASE WHEN p.type = 'burn' THEN a.points ELSE -a.points END) <> 0
ORDER BY l.issuer_id, p.partner_id"""

# Outstanding at T = every member account entry stamped before T (negative balances
# included), read from the journal itself in one pass for both ends of the period.
# Adjustments: minus the `adjusted` accounts' movement in the period (what members got).
_OUTSTANDING_SQL = """
SELECT coalesce(sum(amount) FILTER (
           WHERE posted_at < :start AND account <> 'adjusted'), 0) AS outstanding_start,
       coalesce(sum(amount) FILTER (WHERE account <> 'adjusted'), 0) AS outstanding_end,
       -coalesce(sum(amount) FILTER (
           WHERE posted_at >= :start AND account = 'adjusted'), 0) AS adjusted
FROM entries
WHERE account IN ('available', 'held', 'pending', 'adjusted') AND posted_at < :end"""


async def read_period(conn: AsyncConnection, period: Period) -> PeriodFigures:
    """Measure the period. Run it in one REPEATABLE READ snapshot after the journal has
    been closed until `period.end`, so the figures are final and mutually consistent."""
    bounds = {"start": period.start, "end": period.end}
    # A batch job joining hundreds of thousands of rows: let its hashes stay in memory
    # (PostgreSQL's 4 MB default spills them to disk). Only for this database transaction.
    await conn.execute(text(f"SET LOCAL work_mem = '{SETTLEMENT_WORK_MEM_MB}MB'"))
    activity = tuple(
        PartnerActivity(
            partner_id=row.partner_id,
            partner_name=row.name,
            currency=row.settlement_currency,
            earned_points=int(row.earned),
            earn_reversed_points=int(row.earn_reversed),
            burned_points=int(row.burned),
            burn_reversed_points=int(row.burn_reversed),
            expired_points=int(row.expired),
            issuance_exact=Decimal(row.issuance_exact),
            redemption_exact=Decimal(row.redemption_exact),
            expired_value_exact=Decimal(row.expired_value_exact),
            final=bool(row.final),
            foreign_postings=sum(
                1
                for code in {row.currency_min, row.currency_max}
                if code is not None and code != row.settlement_currency
            ),
        )
        for row in await conn.execute(text(_ACTIVITY_SQL), bounds)
    )
    accounts = {
        row.owner: JournalAccounts(int(row.issued), int(row.redeemed), int(row.expired))
        for row in await conn.execute(text(_ACCOUNTS_SQL), bounds)
    }
    flows = tuple(
        CrossBrandFlow(row.issuer_id, row.redeemer_id, int(row.points))
        for row in await conn.execute(text(_CROSS_BRAND_SQL), bounds)
    )
    outstanding = (await conn.execute(text(_OUTSTANDING_SQL), bounds)).one()
    return PeriodFigures(
        period=period,
        activity=activity,
        accounts=accounts,
        cross_brand=flows,
        outstanding_start=int(outstanding.outstanding_start),
        outstanding_end=int(outstanding.outstanding_end),
        adjusted=int(outstanding.adjusted),
    )


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
