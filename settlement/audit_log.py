"""The audit log: who did what, when, for every finance write (append-only table)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.operators import OperatorIdentity
from settlement.tables import audit_log

__all__ = ["actor_name", "record"]


def actor_name(identity: OperatorIdentity) -> str:
    """How an operator is named on runs, documents and payments: role and token name."""
    return f"{identity.role}:{identity.name}"


async def record(
    conn: AsyncConnection,
    identity: OperatorIdentity,
    *,
    action: str,
    subject: str,
    details: dict[str, Any],
    at: datetime,
) -> None:
    """Append one line, in the database transaction of the write it records."""
    await conn.execute(
        audit_log.insert().values(
            at=at,
            actor=actor_name(identity),
            action=action,
            subject=subject,
            details={"token_id": identity.token_id, **details},
        )
    )
