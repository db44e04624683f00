"""Settlement tables: one row per run, its per-partner lines and its cross-brand flows.

Registered on the shared `exchange.tables.metadata`, so migrations cover them too.

A run is written once, in the database transaction that computed it, and never changes
(closed runs never change): there is no UPDATE path in the code. Runs chain: each run
covers `[period_start, period_end)` where `period_start` is the previous run's
`period_end`. UNIQUE(period_end) makes concurrent attempts at one period converge on one
run; UNIQUE(period_start) makes two runs that computed their start from the same
previous run (so would overlap) collide, so one of them retries and sees the other.

Money columns hold both figures: `*_exact` is the sum of points x price as posted
(up to 6 decimals, exact), the plain column that sum rounded once, half-even, to the
currency's minor unit.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    PrimaryKeyConstraint,
    String,
    Table,
    text,
)

from exchange.tables import ID, MONEY, metadata

__all__ = ["settlement_cross_brand", "settlement_lines", "settlement_runs"]


def _points(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False)


settlement_runs = Table(
    "settlement_runs",
    metadata,
    Column("run_id", ID, primary_key=True),
    Column("period_start", DateTime(timezone=True), nullable=False, unique=True),
    Column("period_end", DateTime(timezone=True), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("reconciled", Boolean, nullable=False),
    # Control totals over the whole ledger for the period (points).
    _points("issued_points"),  # earns - earn reversals
    _points("redeemed_points"),  # burns - burn reversals
    _points("expired_points"),
    _points("earn_reversed_points"),
    _points("burn_reversed_points"),
    _points("outstanding_start"),  # member accounts before period_start
    _points("outstanding_end"),  # member accounts before period_end
    # Operator adjustments' net effect on members' points (migration 0006).
    Column("adjusted_points", BigInteger, nullable=False, server_default="0"),
    # The individual checks behind `reconciled` (all must hold).
    Column("conservation_ok", Boolean, nullable=False),
    Column("partner_accounts_ok", Boolean, nullable=False),
    Column("cross_brand_ok", Boolean, nullable=False),
    Column("continuity_ok", Boolean, nullable=False),
    CheckConstraint("period_start < period_end", name="period"),
    CheckConstraint(
        "reconciled = (conservation_ok AND partner_accounts_ok AND cross_brand_ok "
        "AND continuity_ok)",
        name="reconciled",
    ),
)

settlement_lines = Table(
    "settlement_lines",
    metadata,
    Column("run_id", ID, ForeignKey("settlement_runs.run_id"), nullable=False),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    # As at the run: a closed run keeps the name the partner had then.
    Column("partner_name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    _points("earned_points"),
    _points("earn_reversed_points"),
    _points("burned_points"),
    _points("burn_reversed_points"),
    _points("expired_points"),
    Column("issuance_charge_exact", MONEY, nullable=False),
    Column("redemption_credit_exact", MONEY, nullable=False),
    Column("net_exact", MONEY, nullable=False),
    Column("issuance_charge", MONEY, nullable=False),
    Column("redemption_credit", MONEY, nullable=False),
    Column("net", MONEY, nullable=False),
    # Breakage valued at the prices the expired points were issued at (migration 0006).
    Column("expired_value_exact", MONEY, nullable=False, server_default="0"),
    # The partner's last line: it was terminated before the period ended.
    Column("final", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint("run_id", "partner_id"),
    CheckConstraint("net_exact = issuance_charge_exact - redemption_credit_exact", name="net"),
)

settlement_cross_brand = Table(
    "settlement_cross_brand",
    metadata,
    Column("run_id", ID, ForeignKey("settlement_runs.run_id"), nullable=False),
    Column("issuer_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("redeemer_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    _points("points"),  # burned with the redeemer from the issuer's lots, net of refunds
    PrimaryKeyConstraint("run_id", "issuer_id", "redeemer_id"),
)
