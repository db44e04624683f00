"""The events partners can subscribe to (contract §10), and where each is emitted.

Every event is written to `webhook_outbox` in the database transaction of its fact:

    batch.completed          exchange.batches.store.complete_batch (the batch is marked completed)
    statement.ready          settlement.events.statement_ready (a run is approved)
    key.revoked              partners.registry.revoke_key (the key is revoked)
    member.points_expiring   `emit_points_expiring`: the hook the expiry reminders call

The delivery worker (`partners.webhooks.worker`) delivers whatever rows are in the outbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.events import STATEMENT_READY, emit

__all__ = [
    "BATCH_COMPLETED",
    "EVENT_TYPES",
    "KEY_REVOKED",
    "POINTS_EXPIRING",
    "STATEMENT_READY",
    "batch_completed",
    "emit",
    "emit_points_expiring",
    "key_revoked",
]

BATCH_COMPLETED = "batch.completed"
KEY_REVOKED = "key.revoked"
POINTS_EXPIRING = "member.points_expiring"
EVENT_TYPES = (BATCH_COMPLETED, STATEMENT_READY, POINTS_EXPIRING, KEY_REVOKED)


async def batch_completed(
    conn: AsyncConnection, partner_id: str, data: dict[str, Any], at: datetime
) -> str:
    return await emit(conn, partner_id, BATCH_COMPLETED, data, at)


async def key_revoked(conn: AsyncConnection, partner_id: str, key_id: str, at: datetime) -> str:
    return await emit(conn, partner_id, KEY_REVOKED, {"key_id": key_id}, at)


async def emit_points_expiring(
    conn: AsyncConnection, partner_id: str, data: dict[str, Any], at: datetime
) -> str:
    """The hook for expiry reminders (another issue): call it in the reminder's transaction."""
    return await emit(conn, partner_id, POINTS_EXPIRING, data, at)
