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
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from exchange.tables import ID, MONEY, metadata, webhook_outbox

__all__ = [
    "audit_log",
    "document_counters",
    "operator_idempotency_keys",
    "payment_allocations",
    "payments",
    "settlement_approvals",
    "settlement_cross_brand",
    "settlement_documents",
    "settlement_lines",
    "settlement_runs",
    "webhook_outbox",
]


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


# -- closing the month (contract §8): approvals, documents, payments --------------------------
#
# Runs stay immutable: approving one appends a row here instead of updating the run. The
# documents, payments, allocations, approvals and the audit log are append-only like the
# journal (migration 0005 installs the same refusing trigger); only the numbering counters
# and the webhook outbox change in place.

settlement_approvals = Table(
    "settlement_approvals",
    metadata,
    Column("run_id", ID, ForeignKey("settlement_runs.run_id"), primary_key=True),
    Column("approved_by", String(128), nullable=False),
    Column("approved_at", DateTime(timezone=True), nullable=False),
)

# One row per (series, year): the last number issued. Locked by the approval's database
# transaction, so numbers are gap-free (a SEQUENCE is not: a rolled-back nextval is lost).
document_counters = Table(
    "document_counters",
    metadata,
    Column("series", String(8), nullable=False),
    Column("year", SmallInteger, nullable=False),
    Column("last_value", Integer, nullable=False),
    PrimaryKeyConstraint("series", "year"),
    CheckConstraint("last_value > 0", name="last_value"),
)

settlement_documents = Table(
    "settlement_documents",
    metadata,
    Column("document_id", ID, primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("series", String(8), nullable=False),
    Column("year", SmallInteger, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("run_id", ID, ForeignKey("settlement_runs.run_id"), nullable=False),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("partner_name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("issued_points", BigInteger, nullable=False),
    Column("redeemed_points", BigInteger, nullable=False),
    Column("issuance_charge", MONEY, nullable=False),
    Column("redemption_credit", MONEY, nullable=False),
    Column("net", MONEY, nullable=False),
    Column("amount", MONEY, nullable=False),  # |net|: what the debtor pays
    Column("issue_date", Date, nullable=False),
    Column("due_date", Date, nullable=False),
    Column("payment_terms_days", SmallInteger, nullable=False),
    Column("tax_note", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    UniqueConstraint("series", "year", "sequence"),
    UniqueConstraint("run_id", "partner_id"),
    CheckConstraint("kind IN ('invoice', 'credit_note')", name="kind"),
    CheckConstraint(
        "(kind = 'invoice' AND net > 0 AND series = 'INV') "
        "OR (kind = 'credit_note' AND net < 0 AND series = 'CN')",
        name="direction",
    ),
    CheckConstraint("amount = abs(net)", name="amount"),
    CheckConstraint("sequence > 0", name="sequence"),
    CheckConstraint("due_date >= issue_date", name="due_date"),
)
Index("ix_settlement_documents_partner_id", settlement_documents.c.partner_id)

payments = Table(
    "payments",
    metadata,
    Column("payment_id", ID, primary_key=True),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("value_date", Date, nullable=False),
    Column("bank_reference", String(128), nullable=False),
    Column("document_id", ID, ForeignKey("settlement_documents.document_id"), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    CheckConstraint("direction IN ('received', 'paid')", name="direction"),
    CheckConstraint("amount > 0", name="amount"),
)
Index("ix_payments_partner_id", payments.c.partner_id)

payment_allocations = Table(
    "payment_allocations",
    metadata,
    Column("payment_id", ID, ForeignKey("payments.payment_id"), nullable=False),
    Column("document_id", ID, ForeignKey("settlement_documents.document_id"), nullable=False),
    Column("amount", MONEY, nullable=False),
    PrimaryKeyConstraint("payment_id", "document_id"),
    CheckConstraint("amount > 0", name="amount"),
)
Index("ix_payment_allocations_document_id", payment_allocations.c.document_id)

# Who did what, when: one row per operator write (append-only).
audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("details", JSONB, nullable=False),
)

# Idempotency keys of operator POSTs, scoped to the operator token (as partner keys are
# scoped to the partner): the stored response is replayed to a retry.
operator_idempotency_keys = Table(
    "operator_idempotency_keys",
    metadata,
    Column("token_id", String(32), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("status_code", SmallInteger, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("token_id", "key"),
)
