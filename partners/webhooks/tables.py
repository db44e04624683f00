"""Webhook tables: each partner's subscription, the delivery state of every outbox event
(`exchange.tables.webhook_outbox`), the fan-out cursor, and the exchange's own signing
keys (sealed by a key-encryption key, `partners.webhooks.keyring`)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

__all__ = ["exchange_keys", "webhook_deliveries", "webhook_fanout", "webhook_subscriptions"]

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

# One row (id 1, made by migration 0010): the last outbox event, by (tx_id, event_id),
# that has its delivery row. The process that holds this row's lock fans out; the others
# skip it, so each cycle reads only the events past the cursor.
webhook_fanout = Table(
    "webhook_fanout",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("tx_id", BigInteger, nullable=False),
    Column("event_id", String(64), nullable=False),
)

# The exchange's Ed25519 keys for signing deliveries; old keys stay listed as `retired`
# so a receiver can still check a delivery signed just before a rotation.
exchange_keys = Table(
    "exchange_keys",
    metadata,
    Column("key_id", ID, primary_key=True),
    Column("public_key", String(64), nullable=False),
    # nonce || AES-256-GCM ciphertext, associated data the key_id; `kek_id` names the
    # key-encryption key that sealed it (NULL: plaintext from before 0010, re-sealed by
    # the first process that holds a KEK).
    Column("private_key", LargeBinary, nullable=False),
    Column("kek_id", String(32), nullable=True),
    Column("status", String(16), nullable=False),  # active | retired
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)
