"""Events for partners, written to `webhook_outbox` in the database transaction of the
fact they report (contract §10: no fact without its event, no event without its fact).

Delivery (signing, retries, `GET /v1/webhook/deliveries`) is the webhook worker's job and
is not built yet; until then the outbox is the record of what will be sent.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.tables import webhook_outbox

__all__ = ["STATEMENT_READY", "emit", "statement_ready"]

STATEMENT_READY = "statement.ready"


async def emit(
    conn: AsyncConnection, partner_id: str, event_type: str, data: dict[str, Any], at: datetime
) -> str:
    event_id = f"evt_{secrets.token_hex(12)}"
    await conn.execute(
        webhook_outbox.insert().values(
            event_id=event_id, partner_id=partner_id, type=event_type, created_at=at, data=data
        )
    )
    return event_id


async def statement_ready(
    conn: AsyncConnection,
    partner_id: str,
    run_id: str,
    document_id: str,
    *,
    number: str,
    at: datetime,
) -> str:
    """A run with the partner's line was approved and its document issued."""
    data = {"run_id": run_id, "document_id": document_id, "number": number}
    return await emit(conn, partner_id, STATEMENT_READY, data, at)
