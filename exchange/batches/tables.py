"""Batch tables: the accepted file (with its signature, the evidence for every item), its
items, and each item id's first result for ever: the result of every item with that id."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from exchange.tables import ID, metadata

__all__ = ["batch_item_results", "batch_items", "batches"]

batches = Table(
    "batches",
    metadata,
    Column("batch_id", ID, primary_key=True),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("status", String(16), nullable=False),  # processing | completed
    Column("items", Integer, nullable=False),
    Column("posted", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    # The verified signature of the upload: the evidence for every posting of the batch.
    Column("key_id", ID, nullable=False),
    Column("signature_input", Text, nullable=False),
    Column("signature", Text, nullable=False),
    Column("content_digest", Text, nullable=True),
    Column("signature_base", LargeBinary, nullable=False),
)
Index("ix_batches_status_created_at", batches.c.status, batches.c.created_at)
Index("ix_batches_partner_id", batches.c.partner_id)

batch_items = Table(
    "batch_items",
    metadata,
    Column("batch_id", ID, nullable=False),  # checked per statement (migration 0019)
    Column("seq", Integer, nullable=False),  # 1-based position in the file
    Column("item_id", String(128), nullable=False),
    # The item as the exchange encoded it (`parse.encode_item`), read back by `decode_item`;
    # text, not jsonb: nothing queries inside it (migration 0018).
    Column("payload", Text, nullable=False),
    # Never updated: an item's result is its item id's first result (migration 0017).
    PrimaryKeyConstraint("batch_id", "seq"),
)

# An item id is the item's idempotency key for ever (contract §9): its first result here.
batch_item_results = Table(
    "batch_item_results",
    metadata,
    Column("partner_id", ID, nullable=False),  # checked per statement (migration 0019)
    Column("item_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("transaction_id", ID, nullable=True),
    Column("code", String(64), nullable=True),
    Column("batch_id", ID, nullable=False),
    PrimaryKeyConstraint("partner_id", "item_id"),
)
