"""Runs in PostgreSQL: storing a run with its lines and flows, the credit-limit handover,
reading runs back, and the postings behind a line.

Driver errors stop here: a collision with a concurrent run (a unique period_start or
period_end, a serialization failure or deadlock) surfaces as `RunCollision`, which the
service answers by looking again; other database refusals are `InvariantViolation`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import InvariantViolation
from exchange.ids import format_transaction_id
from exchange.ledger import PostingType
from exchange.tables import ledger_state, postings
from partners.tables import partners
from settlement.engine import (
    Checks,
    Controls,
    CrossBrandFlow,
    Line,
    Period,
    Settlement,
)
from settlement.tables import settlement_cross_brand, settlement_lines, settlement_runs

__all__ = [
    "LINE_POSTING_TYPES",
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
    "list_runs",
    "load_header",
    "load_run",
    "period_postings",
    "translate_errors",
]

_RETRYABLE = {"40001", "40P01"}  # serialization failure, deadlock


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


# The postings a statement line is made of: what partners earn and burn, and breakage.
LINE_POSTING_TYPES = tuple(
    str(kind)
    for kind in (
        PostingType.EARN,
        PostingType.EARN_REVERSAL,
        PostingType.BURN,
        PostingType.BURN_REVERSAL,
        PostingType.EXPIRY,
    )
)


async def period_postings(
    conn: AsyncConnection, partner_id: str, start: datetime, end: datetime, *, limit: int
) -> list[PeriodPosting]:
    """A partner's settlement postings stamped in `[start, end)`, oldest first: exactly
    the rows `read_period` sums into that partner's line."""
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
