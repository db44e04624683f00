"""Webhook tables: each partner's subscription, the delivery state of every outbox event
(`exchange.tables.webhook_outbox`), and the exchange's own signing keys."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from exchange.tables import ID, metadata

__all__ = ["exchange_keys", "webhook_deliveries", "webhook_subscriptions"]

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("partner_id", ID, ForeignKey("partners.partner_id"), primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per outbox event once the worker has seen it.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("event_id", ID, ForeignKey("webhook_outbox.event_id"), primary_key=True),
    Column("partner_id", ID, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed | skipped
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_status", SmallInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
)
Index(
    "ix_webhook_deliveries_status_next",
    webhook_deliveries.c.status,
    webhook_deliveries.c.next_attempt_at,
)
Index("ix_webhook_deliveries_partner_id", webhook_deliveries.c.partner_id)

# The exchange's Ed25519 keys for signing deliveries; old keys stay listed as `retired`
# so a receiver can still check a delivery signed just before a rotation.
exchange_keys = Table(
    "exchange_keys",
    metadata,
    Column("key_id", ID, primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("private_key", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # active | retired
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)
