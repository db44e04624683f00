"""Closing the month (contract §8, first half): approvals, numbered settlement documents,
payments and their allocations, the webhook outbox, the audit log, operator idempotency
keys; partners gain payment terms, a tax note and their open receivable.

Approvals, documents, payments, allocations and the audit log are append-only: the
`ledger_refuse_change()` trigger function of 0002 refuses UPDATE, DELETE and TRUNCATE.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GUARDED_TABLES = (
    "settlement_approvals",
    "settlement_documents",
    "payments",
    "payment_allocations",
    "audit_log",
)
MONEY = sa.Numeric(precision=28, scale=6)


def _partners() -> None:
    op.add_column(
        "partners", sa.Column("receivable_open", MONEY, server_default="0", nullable=False)
    )
    op.add_column(
        "partners",
        sa.Column("payment_terms_days", sa.SmallInteger(), server_default="14", nullable=False),
    )
    op.add_column("partners", sa.Column("tax_note", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_partners_payment_terms_days"), "partners", "payment_terms_days BETWEEN 0 AND 365"
    )
    op.create_check_constraint(
        op.f("ck_partners_receivable_open"), "partners", "receivable_open >= 0"
    )


def _documents() -> None:
    op.create_table(
        "settlement_approvals",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("approved_by", sa.String(length=128), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["settlement_runs.run_id"],
            name=op.f("fk_settlement_approvals_run_id_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_settlement_approvals")),
    )  # fmt: skip
    op.create_table(
        "document_counters",
        sa.Column("series", sa.String(length=8), nullable=False),
        sa.Column("year", sa.SmallInteger(), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.CheckConstraint("last_value > 0", name=op.f("ck_document_counters_last_value")),
        sa.PrimaryKeyConstraint("series", "year", name=op.f("pk_document_counters")),
    )
    op.create_table(
        "settlement_documents",
        sa.Column("document_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("series", sa.String(length=8), nullable=False),
        sa.Column("year", sa.SmallInteger(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("partner_name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_points", sa.BigInteger(), nullable=False),
        sa.Column("redeemed_points", sa.BigInteger(), nullable=False),
        sa.Column("issuance_charge", MONEY, nullable=False),
        sa.Column("redemption_credit", MONEY, nullable=False),
        sa.Column("net", MONEY, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("issue_date", sa.Date(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("payment_terms_days", sa.SmallInteger(), nullable=False),
        sa.Column("tax_note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.CheckConstraint("kind IN ('invoice', 'credit_note')", name=op.f("ck_settlement_documents_kind")),
        sa.CheckConstraint(
            "(kind = 'invoice' AND net > 0 AND series = 'INV') "
            "OR (kind = 'credit_note' AND net < 0 AND series = 'CN')",
            name=op.f("ck_settlement_documents_direction"),
        ),
        sa.CheckConstraint("amount = abs(net)", name=op.f("ck_settlement_documents_amount")),
        sa.CheckConstraint("sequence > 0", name=op.f("ck_settlement_documents_sequence")),
        sa.CheckConstraint("due_date >= issue_date", name=op.f("ck_settlement_documents_due_date")),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.partner_id"],
            name=op.f("fk_settlement_documents_partner_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["settlement_runs.run_id"],
            name=op.f("fk_settlement_documents_run_id_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("document_id", name=op.f("pk_settlement_documents")),
        sa.UniqueConstraint("number", name=op.f("uq_settlement_documents_number")),
        sa.UniqueConstraint(
            "run_id", "partner_id", name=op.f("uq_settlement_documents_run_id_partner_id")
        ),
        sa.UniqueConstraint(
            "series", "year", "sequence", name=op.f("uq_settlement_documents_series_year_sequence")
        ),
    )  # fmt: skip
    op.create_index(
        "ix_settlement_documents_partner_id", "settlement_documents", ["partner_id"], unique=False
    )


def _payments() -> None:
    op.create_table(
        "payments",
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("value_date", sa.Date(), nullable=False),
        sa.Column("bank_reference", sa.String(length=128), nullable=False),
        sa.Column("document_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.CheckConstraint("direction IN ('received', 'paid')", name=op.f("ck_payments_direction")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payments_amount")),
        sa.ForeignKeyConstraint(
            ["document_id"], ["settlement_documents.document_id"],
            name=op.f("fk_payments_document_id_settlement_documents"),
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.partner_id"], name=op.f("fk_payments_partner_id_partners")
        ),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_payments")),
    )  # fmt: skip
    op.create_index("ix_payments_partner_id", "payments", ["partner_id"], unique=False)
    op.create_table(
        "payment_allocations",
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("document_id", sa.String(length=64), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_allocations_amount")),
        sa.ForeignKeyConstraint(
            ["document_id"], ["settlement_documents.document_id"],
            name=op.f("fk_payment_allocations_document_id_settlement_documents"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.payment_id"],
            name=op.f("fk_payment_allocations_payment_id_payments"),
        ),
        sa.PrimaryKeyConstraint("payment_id", "document_id", name=op.f("pk_payment_allocations")),
    )  # fmt: skip
    op.create_index(
        "ix_payment_allocations_document_id", "payment_allocations", ["document_id"], unique=False
    )


def _outbox_and_audit() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.partner_id"],
            name=op.f("fk_webhook_outbox_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_outbox")),
    )  # fmt: skip
    op.create_index(
        "ix_webhook_outbox_partner_id_created_at",
        "webhook_outbox",
        ["partner_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "operator_idempotency_keys",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_id", "key", name=op.f("pk_operator_idempotency_keys")),
    )


def upgrade() -> None:
    _partners()
    _documents()
    _payments()
    _outbox_and_audit()
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
    for table in (
        "operator_idempotency_keys",
        "audit_log",
        "webhook_outbox",
        "payment_allocations",
        "payments",
        "settlement_documents",
        "document_counters",
        "settlement_approvals",
    ):
        op.drop_table(table)
    op.drop_constraint(op.f("ck_partners_receivable_open"), "partners", type_="check")
    op.drop_constraint(op.f("ck_partners_payment_terms_days"), "partners", type_="check")
    for column in ("tax_note", "payment_terms_days", "receivable_open"):
        op.drop_column("partners", column)
