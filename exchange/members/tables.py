"""Members' tables (registered on the one shared MetaData; migration 0007 creates them)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Uuid,
    func,
)

from exchange.tables import ID, metadata, webhook_outbox

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
