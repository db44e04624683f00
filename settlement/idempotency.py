"""Idempotency for operator POSTs (contract §8 conventions, §2.2 rules), scoped to the
operator token as partner keys are scoped to the partner.

The same mechanism as the partner path (`exchange.store.claim_idempotency_keys`): a
transaction-scoped advisory try-lock on the key (held: the first request is still in
flight, 409 `request_in_progress`), then the stored response (same fingerprint: replay
it; another: 422 `idempotency_key_reused`). The response is stored in the database
transaction of the write, so a failed request leaves its key unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import IdempotencyKeyReused, RequestInProgress
from settlement.tables import operator_idempotency_keys

__all__ = ["OperatorIdempotency", "StoredReply", "claim", "remember"]

# A namespace of its own, so an operator key can never share a lock with a partner key.
_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended('operator' || chr(31) || :scope, 0))"


@dataclass(frozen=True, slots=True)
class OperatorIdempotency:
    token_id: str
    key: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class StoredReply:
    status_code: int
    body: bytes


async def claim(conn: AsyncConnection, idempotency: OperatorIdempotency) -> StoredReply | None:
    """The earlier reply to replay, or None: go ahead, the key is ours until commit."""
    scope = f"{idempotency.token_id}\x1f{idempotency.key}"
    if not (await conn.execute(text(_LOCK_SQL), {"scope": scope})).scalar_one():
        raise RequestInProgress()
    row = (
        await conn.execute(
            select(operator_idempotency_keys).where(
                operator_idempotency_keys.c.token_id == idempotency.token_id,
                operator_idempotency_keys.c.key == idempotency.key,
            )
        )
    ).first()
    if row is None:
        return None
    if row.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return StoredReply(row.status_code, row.response)


async def remember(
    conn: AsyncConnection,
    idempotency: OperatorIdempotency,
    reply: StoredReply,
    at: datetime,
) -> None:
    await conn.execute(
        operator_idempotency_keys.insert().values(
            token_id=idempotency.token_id,
            key=idempotency.key,
            fingerprint=idempotency.fingerprint,
            status_code=reply.status_code,
            response=reply.body,
            created_at=at,
        )
    )
