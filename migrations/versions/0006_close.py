"""Closing the month: adjustments (four eyes), the operator as an issuer, partners
leaving, and the figures disputes and the liability roll-forward need.

- `postings`: type `adjustment`; `terms_version` (the partner terms a posting was priced
  with); `purchase_amount`/`purchase_currency` (what an earn was for, for disputes).
- `entries`: account `adjusted` (the issuer's counterpart of an adjustment).
- `partners`: status `terminated` (for ever) and `terminated_at`; status `operator` for the
  reserved row `operator`, the issuer of goodwill points: it has no keys, cannot sign and
  cannot be re-activated, and exists so lots can name it as their issuer.
- `adjustments`: requested by one operator token, approved by another.
- `settlement_runs.adjusted_points`, `settlement_lines.expired_value_exact` and `final`.

Revision ID: 0006
Revises: 0005 (the integrator re-chains it after 0005)
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

POSTING_TYPES_OLD = (
    "'earn', 'burn', 'earn_reversal', 'burn_reversal', 'hold', 'hold_release', 'expiry', "
    "'maturation'"
)
ACCOUNTS_OLD = "'available', 'held', 'pending', 'issued', 'redeemed', 'breakage'"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    _replace_check("postings", "type", f"type IN ({POSTING_TYPES_OLD}, 'adjustment')")
    _replace_check("entries", "account", f"account IN ({ACCOUNTS_OLD}, 'adjusted')")
    _replace_check(
        "partners", "status", "status IN ('active', 'suspended', 'terminated', 'operator')"
    )
    op.add_column("postings", sa.Column("terms_version", sa.Integer(), nullable=True))
    op.add_column(
        "postings",
        sa.Column("purchase_amount", sa.Numeric(precision=28, scale=6), nullable=True),
    )
    op.add_column("postings", sa.Column("purchase_currency", sa.String(length=3), nullable=True))
    op.create_check_constraint(
        op.f("ck_postings_adjustment"),
        "postings",
        "type <> 'adjustment' OR (partner_id IS NOT NULL AND unit_price IS NOT NULL)",
    )
    op.add_column("partners", sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f("ck_partners_terminated"),
        "partners",
        "(status = 'terminated') = (terminated_at IS NOT NULL)",
    )
    # The operator as an issuer (goodwill points). Its price values its liability; an
    # admin may re-price it like any partner (PATCH), but never give it keys or a status.
    op.execute(
        "INSERT INTO partners (partner_id, name, settlement_currency, status, terms_version, "
        "issue_price, redemption_value, earn_rates, created_at, updated_at) VALUES "
        "('operator', 'Operator (goodwill)', 'EUR', 'operator', 1, 0.010000, 0, '{}'::jsonb, "
        "'1970-01-01T00:00:00Z', '1970-01-01T00:00:00Z')"
    )
    op.execute(
        "INSERT INTO partner_terms (partner_id, version, effective_at, issue_price, "
        "redemption_value, earn_rates, credit_limit, status, changed_by) VALUES "
        "('operator', 1, '1970-01-01T00:00:00Z', 0.010000, 0, '{}'::jsonb, NULL, 'operator', "
        "'migration 0006')"
    )
    op.add_column(
        "settlement_runs",
        sa.Column("adjusted_points", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "settlement_lines",
        sa.Column(
            "expired_value_exact",
            sa.Numeric(precision=28, scale=6),
            server_default="0",
            nullable=False,
        ),
    )
    op.add_column(
        "settlement_lines",
        sa.Column("final", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    _create_adjustments()


def _create_adjustments() -> None:
    op.create_table(
        "adjustments",
        sa.Column("adjustment_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_token_id", sa.String(length=32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(length=128), nullable=True),
        sa.Column("approved_token_id", sa.String(length=32), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("posting_id", sa.Uuid(), nullable=True),
        sa.CheckConstraint("points <> 0", name=op.f("ck_adjustments_points")),
        sa.CheckConstraint(
            "status IN ('pending', 'posted', 'expired')", name=op.f("ck_adjustments_status")
        ),
        sa.CheckConstraint(
            "(status = 'posted') = (posting_id IS NOT NULL)", name=op.f("ck_adjustments_posted")
        ),
        sa.CheckConstraint(
            "approved_token_id IS NULL OR approved_token_id <> requested_token_id",
            name=op.f("ck_adjustments_four_eyes"),
        ),
        sa.ForeignKeyConstraint(
            ["issuer_id"], ["partners.partner_id"], name=op.f("fk_adjustments_issuer_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_adjustments_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_adjustments_posting_id_postings"),
        ),
        sa.PrimaryKeyConstraint("adjustment_id", name=op.f("pk_adjustments")),
    )
    op.create_index("ix_adjustments_member_id", "adjustments", ["member_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_adjustments_member_id", table_name="adjustments")
    op.drop_table("adjustments")
    op.drop_column("settlement_lines", "final")
    op.drop_column("settlement_lines", "expired_value_exact")
    op.drop_column("settlement_runs", "adjusted_points")
    op.execute("DELETE FROM partner_terms WHERE partner_id = 'operator'")
    op.execute("DELETE FROM partners WHERE partner_id = 'operator'")
    op.drop_constraint(op.f("ck_partners_terminated"), "partners", type_="check")
    op.drop_column("partners", "terminated_at")
    op.drop_constraint(op.f("ck_postings_adjustment"), "postings", type_="check")
    op.drop_column("postings", "purchase_currency")
    op.drop_column("postings", "purchase_amount")
    op.drop_column("postings", "terms_version")
    _replace_check("partners", "status", "status IN ('active', 'suspended')")
    _replace_check("entries", "account", f"account IN ({ACCOUNTS_OLD})")
    _replace_check("postings", "type", f"type IN ({POSTING_TYPES_OLD})")
