"""Idempotency for single requests outside the batch path (enrolment, sessions)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange import store
from exchange.errors import IdempotencyKeyReused, RequestInProgress
from exchange.service._commands import Idempotency, Outcome

__all__ = ["remember", "replay_or_claim"]


async def replay_or_claim(
    conn: AsyncConnection, partner_id: str, idempotency: Idempotency | None
) -> Outcome | None:
    """For a single idempotent request: the earlier response (a replay), an error (the key
    is in use or was used for another request), or None: go ahead, the key is ours until
    the database transaction ends."""
    if idempotency is None:
        return None
    claim = (partner_id, idempotency.key)
    locked, stored = await store.claim_idempotency_keys(conn, [claim])
    if claim not in locked:
        raise RequestInProgress()
    previous = stored.get(claim)
    if previous is None:
        return None
    if previous.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return Outcome(previous.status_code, previous.response, replayed=True)


async def remember(
    conn: AsyncConnection,
    partner_id: str,
    *,
    idempotency: Idempotency | None,
    status_code: int,
    body: bytes,
    posting_id: uuid.UUID | None = None,
) -> None:
    """Store the response under the request's idempotency key (same database transaction)."""
    if idempotency is not None:
        await store.save_idempotency(
            conn,
            [
                store.IdempotencyRecord(
                    partner_id,
                    idempotency.key,
                    idempotency.fingerprint,
                    status_code,
                    body,
                    posting_id,
                )
            ],
        )
