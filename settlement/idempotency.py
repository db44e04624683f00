"""Idempotency for operator POSTs (contract §8 conventions, §2.2 rules), scoped to the
operator token as partner keys are scoped to the partner.

The one mechanism of every caller (`exchange.store.claim_keys` and `remember`, through
`exchange.service.replay_or_claim`), in the operator tokens' scope
(`settlement.store.OPERATOR_KEYS`): a transaction-scoped advisory try-lock on the key
(held: the first request is still in flight, 409 `request_in_progress`), then the stored
response (same fingerprint: replay it; another: 422 `idempotency_key_reused`). The
response is stored in the database transaction of the write, so a failed request leaves
its key unused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.service import Idempotency, replay_or_claim
from exchange.service import remember as remember_response
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
    earlier = await replay_or_claim(
        conn, idempotency.token_id, _key(idempotency), scope=store.OPERATOR_KEYS
    )
    return None if earlier is None else StoredReply(earlier.status_code, earlier.body)


async def remember(
    conn: AsyncConnection,
    idempotency: OperatorIdempotency,
    reply: StoredReply,
    at: datetime,
) -> None:
    await remember_response(
        conn,
        idempotency.token_id,
        idempotency=_key(idempotency),
        status_code=reply.status_code,
        body=reply.body,
        scope=store.OPERATOR_KEYS,
        at=at,
    )


def _key(idempotency: OperatorIdempotency) -> Idempotency:
    return Idempotency(idempotency.key, idempotency.fingerprint)
