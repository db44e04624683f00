"""Partner tables: partners and their terms, keys, signature nonces, member sessions.

Registered on the shared `exchange.tables.metadata`, so migrations cover them too. The
partner's counter rows (`partner_counters`) and the signatures stored with postings
(`posting_signatures`) are the ledger's, written in the posting's own database
transaction: they stay in `exchange.tables`.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from exchange.tables import ID, MONEY, PRICE, metadata

__all__ = ["member_sessions", "partner_keys", "partner_terms", "partners", "signature_nonces"]


def _timestamp(name: str, *, nullable: bool = False, default_now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default_now else None,
    )


# The owners of partner accounts; the row carries the terms in force now.
partners = Table(
    "partners",
    metadata,
    Column("partner_id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("settlement_currency", String(3), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    # The terms in force now; every change is also appended to partner_terms.
    Column("terms_version", Integer, nullable=False),
    Column("issue_price", PRICE, nullable=False),
    Column("redemption_value", PRICE, nullable=False),
    Column("earn_rates", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("credit_limit", MONEY, nullable=True),
    # Earn multipliers per member tier, e.g. {"gold": "1.5"} (purchase-based earns only).
    Column("tier_multipliers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # Issuance value already covered by closed settlement runs (for the credit limit).
    Column("settled_issuance", MONEY, nullable=False, server_default="0"),
    # Positive nets of closed runs not yet paid (computed, approved or invoiced): counts
    # against the credit limit until a payment settles it (contract §8).
    Column("receivable_open", MONEY, nullable=False, server_default="0"),
    Column("payment_terms_days", SmallInteger, nullable=False, server_default="14"),
    Column("tax_note", Text, nullable=True),
    _timestamp("created_at", default_now=True),
    _timestamp("updated_at", default_now=True),
    # A terminated partner stays terminated for ever (its lots stay attributed to it).
    _timestamp("terminated_at", nullable=True),
    # 'operator': the reserved row `operator`, issuer of goodwill points (migration 0006).
    CheckConstraint("status IN ('active', 'suspended', 'terminated', 'operator')", name="status"),
    CheckConstraint("(status = 'terminated') = (terminated_at IS NOT NULL)", name="terminated"),
    CheckConstraint("issue_price >= 0 AND redemption_value >= 0", name="prices"),
    CheckConstraint("credit_limit IS NULL OR credit_limit >= 0", name="credit_limit"),
    CheckConstraint("payment_terms_days BETWEEN 0 AND 365", name="payment_terms_days"),
    CheckConstraint("receivable_open >= 0", name="receivable_open"),
)

partner_terms = Table(
    "partner_terms",
    metadata,
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("version", Integer, nullable=False),
    _timestamp("effective_at"),
    Column("issue_price", PRICE, nullable=False),
    Column("redemption_value", PRICE, nullable=False),
    Column("earn_rates", JSONB, nullable=False),
    Column("credit_limit", MONEY, nullable=True),
    Column("status", String(16), nullable=False),
    Column("tier_multipliers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("changed_by", String(128), nullable=True),
    PrimaryKeyConstraint("partner_id", "version"),
)


partner_keys = Table(
    "partner_keys",
    metadata,
    Column("key_id", ID, primary_key=True),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("public_key", LargeBinary, nullable=False),  # raw 32-byte Ed25519 public key
    Column("status", String(16), nullable=False, server_default="active"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("status IN ('active', 'revoked')", name="status"),
    CheckConstraint("octet_length(public_key) = 32", name="public_key"),
    Index("ix_partner_keys_partner_id", "partner_id"),
)

# A (key, nonce) pair is accepted once; rows older than the signature window are purged.
signature_nonces = Table(
    "signature_nonces",
    metadata,
    Column("key_id", ID, primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Index("ix_signature_nonces_seen_at", "seen_at"),
)

member_sessions = Table(
    "member_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the bearer token
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_member_sessions_expires_at", "expires_at"),
)
