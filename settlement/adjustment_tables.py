"""The adjustments table (migration 0006): operator corrections to a member's points.

An adjustment is requested by one operator token and posted only when a different token
approves it (four eyes; the database refuses the same token in both columns). Once
posted it points at its `adjustment` posting; a pending one expires after 7 days.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Uuid,
)

from exchange.tables import ID, metadata

__all__ = ["adjustments"]

adjustments = Table(
    "adjustments",
    metadata,
    Column("adjustment_id", ID, primary_key=True),
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("issuer_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("points", BigInteger, nullable=False),  # signed: + credit, - debit
    Column("reason", String(500), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("requested_token_id", String(32), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("approved_by", String(128), nullable=True),
    Column("approved_token_id", String(32), nullable=True),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=True),
    CheckConstraint("points <> 0", name="points"),
    CheckConstraint("status IN ('pending', 'posted', 'expired')", name="status"),
    CheckConstraint("(status = 'posted') = (posting_id IS NOT NULL)", name="posted"),
    CheckConstraint(
        "approved_token_id IS NULL OR approved_token_id <> requested_token_id", name="four_eyes"
    ),
    Index("ix_adjustments_member_id", "member_id"),
)
