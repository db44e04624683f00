"""Settlement: runs, per-partner lines, cross-brand flows.

Closed runs never change: like the journal, the settlement tables refuse UPDATE,
DELETE and TRUNCATE (the `ledger_refuse_change()` trigger function of 0002).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GUARDED_TABLES = ("settlement_runs", "settlement_lines", "settlement_cross_brand")


def upgrade() -> None:
    op.create_table(
        "settlement_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("reconciled", sa.Boolean(), nullable=False),
        sa.Column("issued_points", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_points", sa.BigInteger(), nullable=False),
        sa.Column("expired_points", sa.BigInteger(), nullable=False),
        sa.Column("earn_reversed_points", sa.BigInteger(), nullable=False),
        sa.Column("burn_reversed_points", sa.BigInteger(), nullable=False),
        sa.Column("outstanding_start", sa.BigInteger(), nullable=False),
        sa.Column("outstanding_end", sa.BigInteger(), nullable=False),
        sa.Column("conservation_ok", sa.Boolean(), nullable=False),
        sa.Column("partner_accounts_ok", sa.Boolean(), nullable=False),
        sa.Column("cross_brand_ok", sa.Boolean(), nullable=False),
        sa.Column("continuity_ok", sa.Boolean(), nullable=False),
        sa.CheckConstraint("period_start < period_end", name=op.f("ck_settlement_runs_period")),
        sa.CheckConstraint(
            "reconciled = (conservation_ok AND partner_accounts_ok AND cross_brand_ok "
            "AND continuity_ok)",
            name=op.f("ck_settlement_runs_reconciled"),
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_settlement_runs")),
        sa.UniqueConstraint("period_end", name=op.f("uq_settlement_runs_period_end")),
        sa.UniqueConstraint("period_start", name=op.f("uq_settlement_runs_period_start")),
    )
    op.create_table(
        "settlement_cross_brand",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("redeemer_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["partners.partner_id"],
            name=op.f("fk_settlement_cross_brand_issuer_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["redeemer_id"],
            ["partners.partner_id"],
            name=op.f("fk_settlement_cross_brand_redeemer_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["settlement_runs.run_id"],
            name=op.f("fk_settlement_cross_brand_run_id_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint(
            "run_id", "issuer_id", "redeemer_id", name=op.f("pk_settlement_cross_brand")
        ),
    )
    op.create_table(
        "settlement_lines",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("partner_name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("earned_points", sa.BigInteger(), nullable=False),
        sa.Column("earn_reversed_points", sa.BigInteger(), nullable=False),
        sa.Column("burned_points", sa.BigInteger(), nullable=False),
        sa.Column("burn_reversed_points", sa.BigInteger(), nullable=False),
        sa.Column("expired_points", sa.BigInteger(), nullable=False),
        sa.Column("issuance_charge_exact", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.Column("redemption_credit_exact", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.Column("net_exact", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.Column("issuance_charge", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.Column("redemption_credit", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.Column("net", sa.Numeric(precision=28, scale=6), nullable=False),
        sa.CheckConstraint(
            "net_exact = issuance_charge_exact - redemption_credit_exact",
            name=op.f("ck_settlement_lines_net"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_settlement_lines_partner_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["settlement_runs.run_id"],
            name=op.f("fk_settlement_lines_run_id_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("run_id", "partner_id", name=op.f("pk_settlement_lines")),
    )
    for table in GUARDED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )


def downgrade() -> None:
    op.drop_table("settlement_lines")
    op.drop_table("settlement_cross_brand")
    op.drop_table("settlement_runs")
