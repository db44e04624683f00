"""Operator idempotency rows (contract §8 conventions), scoped to the operator token: the
advisory try-lock on a key and the stored reply. The claim logic is
`settlement.idempotency`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.tables import operator_idempotency_keys

__all__ = [
    "StoredOperatorReply",
    "insert_operator_reply",
    "load_operator_reply",
    "try_lock_operator_key",
]

# A namespace of its own, so an operator key can never share a lock with a partner key.
_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended('operator' || chr(31) || :scope, 0))"


@dataclass(frozen=True, slots=True)
class StoredOperatorReply:
    fingerprint: bytes
    status_code: int
    body: bytes


async def try_lock_operator_key(conn: AsyncConnection, token_id: str, key: str) -> bool:
    """Lock the key until the database transaction ends; False if another holds it."""
    scope = f"{token_id}\x1f{key}"
    locked: bool = (await conn.execute(text(_LOCK_SQL), {"scope": scope})).scalar_one()
    return locked


async def load_operator_reply(
    conn: AsyncConnection, token_id: str, key: str
) -> StoredOperatorReply | None:
    row = (
        await conn.execute(
            select(operator_idempotency_keys).where(
                operator_idempotency_keys.c.token_id == token_id,
                operator_idempotency_keys.c.key == key,
            )
        )
    ).first()
    if row is None:
        return None
    return StoredOperatorReply(row.fingerprint, row.status_code, row.response)


async def insert_operator_reply(
    conn: AsyncConnection,
    token_id: str,
    key: str,
    reply: StoredOperatorReply,
    at: datetime,
) -> None:
    await conn.execute(
        operator_idempotency_keys.insert().values(
            token_id=token_id,
            key=key,
            fingerprint=reply.fingerprint,
            status_code=reply.status_code,
            response=reply.body,
            created_at=at,
        )
    )
