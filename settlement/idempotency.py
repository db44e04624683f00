"""Idempotency for operator POSTs (contract §8 conventions, §2.2 rules), scoped to the
operator token as partner keys are scoped to the partner.

The same mechanism as the partner path (`exchange.store.claim_idempotency_keys`): a
transaction-scoped advisory try-lock on the key (held: the first request is still in
flight, 409 `request_in_progress`), then the stored response (same fingerprint: replay
it; another: 422 `idempotency_key_reused`). The response is stored in the database
transaction of the write, so a failed request leaves its key unused. The rows and the
lock are `settlement.store`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import IdempotencyKeyReused, RequestInProgress
from settlement import store

__all__ = ["OperatorIdempotency", "StoredReply", "claim", "remember"]


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
    if not await store.try_lock_operator_key(conn, idempotency.token_id, idempotency.key):
        raise RequestInProgress()
    stored = await store.load_operator_reply(conn, idempotency.token_id, idempotency.key)
    if stored is None:
        return None
    if stored.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return StoredReply(stored.status_code, stored.body)


async def remember(
    conn: AsyncConnection,
    idempotency: OperatorIdempotency,
    reply: StoredReply,
    at: datetime,
) -> None:
    stored = store.StoredOperatorReply(idempotency.fingerprint, reply.status_code, reply.body)
    await store.insert_operator_reply(conn, idempotency.token_id, idempotency.key, stored, at)
