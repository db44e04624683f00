"""Members' tables (registered on the one shared MetaData; migration 0007 creates them)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from exchange.tables import ID, metadata

__all__ = ["member_idempotency_keys", "webhook_outbox"]

# Idempotency-Key records of member-token POSTs (transfers): the same exactly-once steps
# as partner keys, scoped to the member instead of a partner.
member_idempotency_keys = Table(
    "member_idempotency_keys",
    metadata,
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("status_code", SmallInteger, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("member_id", "key"),
)

# Events for partners' webhooks (contract §10). The webhook work delivers from this table;
# `dedupe_key` makes an event that must exist once per fact (a reminder per lot, N and
# partner) exactly once across restarts and server processes (INSERT ... ON CONFLICT).
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("partner_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("dedupe_key", Text, nullable=True),
    UniqueConstraint("dedupe_key"),
    Index("ix_webhook_outbox_partner_id_created_at", "partner_id", "created_at"),
)
