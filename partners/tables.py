"""Gateway tables: partner keys, signature nonces, member sessions.

Registered on the shared `exchange.tables.metadata`, so migrations cover them too.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    func,
)

from exchange.tables import ID, metadata

__all__ = ["member_sessions", "partner_keys", "signature_nonces"]

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
