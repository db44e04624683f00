"""Settlement SQL: measuring a period of the journal (`read_period`), storing and reading
runs, the credit-limit handover, liabilities.

Driver errors stop here: a collision with a concurrent run (a unique period_start or
period_end, a serialization failure or deadlock) surfaces as `RunCollision`, which the
service answers by looking again; other database refusals are `InvariantViolation`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import InvariantViolation
from exchange.ids import format_transaction_id
from exchange.tables import ledger_state, postings
from partners.tables import partners
from settlement.engine import (
    Checks,
    Controls,
    CrossBrandFlow,
    JournalAccounts,
    Line,
    PartnerActivity,
    Period,
    PeriodFigures,
    Settlement,
)
from settlement.tables import settlement_cross_brand, settlement_lines, settlement_runs

__all__ = [
    "AGEING_LIMITS_DAYS",
    "LINE_POSTING_TYPES",
    "SETTLEMENT_WORK_MEM_MB",
    "LiabilityReconciliation",
    "LiabilityRow",
    "PeriodPosting",
    "RunCollision",
    "RunHeader",
    "StoredRun",
    "add_settled_issuance",
    "closed_until",
    "earliest_posting",
    "find_run",
    "insert_run",
    "latest_run",
    "liabilities",
    "liability_reconciliation",
    "list_runs",
    "load_header",
    "load_run",
    "period_postings",
    "read_period",
    "translate_errors",
]

_RETRYABLE = {"40001", "40P01"}  # serialization failure, deadlock
AGEING_LIMITS_DAYS = (30, 90, 365)
SETTLEMENT_WORK_MEM_MB = 64


class RunCollision(Exception):
    """Another run was stored concurrently (or the snapshot went stale): look again."""


def _sqlstate(exc: DBAPIError) -> str | None:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        state = _sqlstate(exc)
        if state in _RETRYABLE or (state == "23505" and "settlement_runs" in str(exc.orig)):
            raise RunCollision(state) from exc
        if state is not None and (state.startswith("23") or state == "P0001"):
            raise InvariantViolation(f"database refused a settlement write ({state})") from exc
        raise


@dataclass(frozen=True, slots=True)
class RunHeader:
    """A run without its lines: what listing and chaining need."""

    run_id: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    created_by: str
    controls: Controls
    checks: Checks

    @property
    def reconciled(self) -> bool:
        return self.checks.reconciled


@dataclass(frozen=True, slots=True)
class StoredRun:
    header: RunHeader
    settlement: Settlement

    @property
    def run_id(self) -> str:
        return self.header.run_id


# -- writing -----------------------------------------------------------------------------------


async def insert_run(
    conn: AsyncConnection,
    run_id: str,
    settlement: Settlement,
    *,
    created_at: datetime,
    created_by: str,
) -> None:
    """The run, its lines and its cross-brand flows (the caller's database transaction)."""
    controls, checks = settlement.controls, settlement.checks
    await conn.execute(
        settlement_runs.insert().values(
            run_id=run_id,
            period_start=settlement.period.start,
            period_end=settlement.period.end,
            created_at=created_at,
            created_by=created_by,
            reconciled=checks.reconciled,
            issued_points=controls.issued,
            redeemed_points=controls.redeemed,
            expired_points=controls.expired,
            earn_reversed_points=controls.earn_reversed,
            burn_reversed_points=controls.burn_reversed,
            outstanding_start=controls.outstanding_start,
            outstanding_end=controls.outstanding_end,
            adjusted_points=controls.adjusted,
            conservation_ok=checks.conservation,
            partner_accounts_ok=checks.partner_accounts,
            cross_brand_ok=checks.cross_brand,
            continuity_ok=checks.continuity,
        )
    )
    if settlement.lines:
        await conn.execute(
            settlement_lines.insert(),
            [{"run_id": run_id, **_line_row(line)} for line in settlement.lines],
        )
    if settlement.cross_brand:
        await conn.execute(
            settlement_cross_brand.insert(),
            [
                {
                    "run_id": run_id,
                    "issuer_id": flow.issuer_id,
                    "redeemer_id": flow.redeemer_id,
                    "points": flow.points,
                }
                for flow in settlement.cross_brand
            ],
        )


def _line_row(line: Line) -> dict[str, Any]:
    return {
        "partner_id": line.partner_id,
        "partner_name": line.partner_name,
        "currency": line.currency,
        "earned_points": line.earned_points,
        "earn_reversed_points": line.earn_reversed_points,
        "burned_points": line.burned_points,
        "burn_reversed_points": line.burn_reversed_points,
        "expired_points": line.expired_points,
        "issuance_charge_exact": line.issuance_charge_exact,
        "redemption_credit_exact": line.redemption_credit_exact,
        "net_exact": line.net_exact,
        "issuance_charge": line.issuance_charge,
        "redemption_credit": line.redemption_credit,
        "net": line.net,
        "expired_value_exact": line.expired_value_exact,
        "final": line.final,
    }


async def add_settled_issuance(conn: AsyncConnection, lines: Sequence[Line]) -> None:
    """Hand the period's exact issuance value over from 'unsettled' to 'settled', and the
    line's net (when the partner pays) to `receivable_open`, where it counts against the
    credit limit until a payment settles it (contract §8: headroom returns on payment,
    not on computation). The credit check counts issued value - settled issuance +
    receivable_open.

    Partner rows are locked in partner_id order first, the order posting transactions
    lock them in, so the two cannot deadlock."""
    changed = sorted(
        (line.partner_id, line.issuance_charge_exact, max(line.net, Decimal(0)))
        for line in lines
        if line.issuance_charge_exact != 0 or line.net > 0
    )
    if not changed:
        return
    await conn.execute(
        select(partners.c.partner_id)
        .where(partners.c.partner_id.in_([partner_id for partner_id, _, _ in changed]))
        .order_by(partners.c.partner_id)
        .with_for_update(key_share=True)
    )
    for partner_id, value, receivable in changed:
        await conn.execute(
            update(partners)
            .where(partners.c.partner_id == partner_id)
            .values(
                settled_issuance=partners.c.settled_issuance + value,
                receivable_open=partners.c.receivable_open + receivable,
            )
        )


# -- reading -----------------------------------------------------------------------------------


def _header(row: Any) -> RunHeader:
    return RunHeader(
        run_id=row.run_id,
        period_start=row.period_start,
        period_end=row.period_end,
        created_at=row.created_at,
        created_by=row.created_by,
        controls=Controls(
            issued=row.issued_points,
            redeemed=row.redeemed_points,
            expired=row.expired_points,
            earn_reversed=row.earn_reversed_points,
            burn_reversed=row.burn_reversed_points,
            outstanding_start=row.outstanding_start,
            outstanding_end=row.outstanding_end,
            adjusted=row.adjusted_points,
        ),
        checks=Checks(
            conservation=row.conservation_ok,
            partner_accounts=row.partner_accounts_ok,
            cross_brand=row.cross_brand_ok,
            continuity=row.continuity_ok,
        ),
    )


def _line(row: Any) -> Line:
    return Line(
        partner_id=row.partner_id,
        partner_name=row.partner_name,
        currency=row.currency,
        earned_points=row.earned_points,
        earn_reversed_points=row.earn_reversed_points,
        burned_points=row.burned_points,
        burn_reversed_points=row.burn_reversed_points,
        expired_points=row.expired_points,
        issuance_charge_exact=row.issuance_charge_exact,
        redemption_credit_exact=row.redemption_credit_exact,
        net_exact=row.net_exact,
        issuance_charge=row.issuance_charge,
        redemption_credit=row.redemption_credit,
        net=row.net,
        expired_value_exact=row.expired_value_exact,
        final=row.final,
    )


async def latest_run(conn: AsyncConnection) -> RunHeader | None:
    row = (
        await conn.execute(
            select(settlement_runs).order_by(settlement_runs.c.period_end.desc()).limit(1)
        )
    ).first()
    return _header(row) if row is not None else None


async def find_run(conn: AsyncConnection, period_end: datetime) -> RunHeader | None:
    row = (
        await conn.execute(
            select(settlement_runs).where(settlement_runs.c.period_end == period_end)
        )
    ).first()
    return _header(row) if row is not None else None


async def load_header(conn: AsyncConnection, run_id: str) -> RunHeader | None:
    row = (
        await conn.execute(select(settlement_runs).where(settlement_runs.c.run_id == run_id))
    ).first()
    return _header(row) if row is not None else None


async def load_run(conn: AsyncConnection, run_id: str) -> StoredRun | None:
    header = await load_header(conn, run_id)
    if header is None:
        return None
    lines = tuple(
        _line(line)
        for line in await conn.execute(
            select(settlement_lines)
            .where(settlement_lines.c.run_id == run_id)
            .order_by(settlement_lines.c.partner_id)
        )
    )
    flows = tuple(
        CrossBrandFlow(flow.issuer_id, flow.redeemer_id, flow.points)
        for flow in await conn.execute(
            select(settlement_cross_brand)
            .where(settlement_cross_brand.c.run_id == run_id)
            .order_by(settlement_cross_brand.c.issuer_id, settlement_cross_brand.c.redeemer_id)
        )
    )
    settlement = Settlement(
        Period(header.period_start, header.period_end),
        lines,
        flows,
        header.controls,
        header.checks,
    )
    return StoredRun(header, settlement)


async def list_runs(
    conn: AsyncConnection, *, limit: int, before: datetime | None = None
) -> list[RunHeader]:
    """Newest first (by period_end), keyset-paginated."""
    query = select(settlement_runs)
    if before is not None:
        query = query.where(settlement_runs.c.period_end < before)
    query = query.order_by(settlement_runs.c.period_end.desc()).limit(limit)
    return [_header(row) for row in await conn.execute(query)]


async def closed_until(conn: AsyncConnection) -> datetime:
    value: datetime = (
        await conn.execute(select(ledger_state.c.closed_until).where(ledger_state.c.id == 1))
    ).scalar_one()
    return value


async def earliest_posting(conn: AsyncConnection) -> datetime | None:
    """The first posting's time (the index on posted_at makes this one probe)."""
    value: datetime | None = (
        await conn.execute(text("SELECT min(posted_at) FROM postings"))
    ).scalar_one()
    return value


# -- liabilities -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiabilityRow:
    partner_id: str
    partner_name: str
    currency: str
    held_points: int
    buckets: tuple[tuple[int, Decimal], ...]  # (points, exact value) per ageing bucket


# Points still in members' hands, by the lot they came from: what lots hold, plus what
# open holds have reserved from them (a hold can still be voided). Lots past expiry are
# breakage-to-be, not liability, whether or not the sweep has posted it yet.
_LIABILITIES_SQL = """
WITH outstanding AS (
    SELECT issuer_id, expires_at, unit_price, remaining AS points, 0 AS held
    FROM lots WHERE remaining > 0 AND expires_at > :now
    UNION ALL
    SELECT l.issuer_id, l.expires_at, l.unit_price, a.points, a.points AS held
    FROM holds h
    JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
    JOIN lots l ON l.lot_id = a.lot_id
    WHERE h.status = 'open' AND l.expires_at > :now),
bucketed AS (
    SELECT issuer_id, points, held, points * unit_price AS value,
           CASE WHEN expires_at <= :d1 THEN 0 WHEN expires_at <= :d2 THEN 1
                WHEN expires_at <= :d3 THEN 2 ELSE 3 END AS bucket
    FROM outstanding)
SELECT p.partner_id, p.name, p.settlement_currency,
       coalesce(sum(b.held), 0) AS held,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 0), 0) AS p0,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 0), 0) AS v0,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 1), 0) AS p1,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 1), 0) AS v1,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 2), 0) AS p2,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 2), 0) AS v2,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 3), 0) AS p3,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 3), 0) AS v3
FROM partners p LEFT JOIN bucketed b ON b.issuer_id = p.partner_id
GROUP BY p.partner_id, p.name, p.settlement_currency, p.status
-- The operator's goodwill row shows only once it has issued points that are outstanding.
HAVING p.status <> 'operator' OR count(b.issuer_id) > 0
ORDER BY p.partner_id"""


async def liabilities(conn: AsyncConnection, now: datetime) -> list[LiabilityRow]:
    limits = {
        f"d{index}": now + timedelta(days=days)
        for index, days in enumerate(AGEING_LIMITS_DAYS, start=1)
    }
    rows = await conn.execute(text(_LIABILITIES_SQL), {"now": now, **limits})
    return [
        LiabilityRow(
            partner_id=row.partner_id,
            partner_name=row.name,
            currency=row.settlement_currency,
            held_points=int(row.held),
            buckets=tuple(
                (int(getattr(row, f"p{index}")), Decimal(getattr(row, f"v{index}")))
                for index in range(4)
            ),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class LiabilityReconciliation:
    """What separates the issuers' outstanding points from the members' accounts now:
    points past expiry that the sweep has not posted yet (still in members' accounts),
    points open holds reserve from lots already past expiry (they expire when the hold is
    released, unless captured first), and members' negative balances (owed by members,
    netted against no issuer)."""

    expired_not_yet_swept: int
    held_on_expired_lots: int
    member_debt: int
    member_accounts: int  # available + held + pending over all members, from the journal


_RECONCILIATION_SQL = """
SELECT (SELECT coalesce(sum(remaining), 0) FROM lots
        WHERE remaining > 0 AND expires_at <= :now) AS unswept,
       (SELECT coalesce(sum(a.points), 0) FROM holds h
        JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
        JOIN lots l ON l.lot_id = a.lot_id
        WHERE h.status = 'open' AND l.expires_at <= :now) AS held_expired,
       (SELECT coalesce(sum(debt), 0) FROM members) AS debt,
       (SELECT coalesce(sum(amount), 0) FROM entries
        WHERE account IN ('available', 'held', 'pending')) AS accounts"""


async def liability_reconciliation(conn: AsyncConnection, now: datetime) -> LiabilityReconciliation:
    row = (await conn.execute(text(_RECONCILIATION_SQL), {"now": now})).one()
    return LiabilityReconciliation(
        int(row.unswept), int(row.held_expired), int(row.debt), int(row.accounts)
    )


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


# -- the postings behind a line (console drill-down) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class PeriodPosting:
    transaction_id: str  # as partners see it (txn_...)
    type: str
    member_id: str
    points: int
    unit_price: Decimal | None
    currency: str | None
    reference: str | None
    posted_at: datetime


LINE_POSTING_TYPES = ("earn", "earn_reversal", "burn", "burn_reversal", "expiry")


async def period_postings(
    conn: AsyncConnection, partner_id: str, start: datetime, end: datetime, *, limit: int
) -> list[PeriodPosting]:
    """A partner's settlement postings stamped in `[start, end)`, oldest first: exactly
    the rows `engine.read_period` sums into that partner's line."""
    query = (
        select(postings)
        .where(
            postings.c.partner_id == partner_id,
            postings.c.type.in_(LINE_POSTING_TYPES),
            postings.c.posted_at >= start,
            postings.c.posted_at < end,
        )
        .order_by(postings.c.posted_at, postings.c.posting_id)
        .limit(limit)
    )
    return [
        PeriodPosting(
            transaction_id=format_transaction_id(row.posting_id),
            type=row.type,
            member_id=row.member_id,
            points=int(row.points),
            unit_price=row.unit_price,
            currency=row.currency,
            reference=row.reference,
            posted_at=row.posted_at,
        )
        for row in await conn.execute(query)
    ]
