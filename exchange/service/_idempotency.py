"""Idempotency for single requests outside the batch path (enrolment, sessions, batch
acceptance, adjustment requests, webhook retries, operators' POSTs): the store's one
claim (`store.claim_keys`) and one `store.remember`, with the decision every caller
shares (replay, 409, 422, go ahead).

`conn` may be the store's connection or a SQLAlchemy connection inside `engine.begin()`:
the store runs on the driver connection under it, in the same database transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange import store
from exchange.errors import IdempotencyKeyReused, RequestInProgress
from exchange.service._commands import Idempotency, Outcome

__all__ = ["claim_outcome", "remember", "replay_or_claim"]


def claim_outcome(
    claim: tuple[str, str],
    idempotency: Idempotency,
    locked: set[tuple[str, str]],
    stored: dict[tuple[str, str], store.StoredResponse],
) -> Outcome | None:
    """What a claim means: the earlier response (a replay), an error (the key is in use or
    was used for another request), or None: go ahead, the key is ours."""
    if claim not in locked:
        raise RequestInProgress()
    previous = stored.get(claim)
    if previous is None:
        return None
    if previous.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReused()
    return Outcome(previous.status_code, previous.response, replayed=True)


async def replay_or_claim(
    conn: AsyncConnection | store.Connection,
    owner: str,
    idempotency: Idempotency | None,
    *,
    scope: store.KeyScope = store.PARTNER_KEYS,
) -> Outcome | None:
    """For a single idempotent request: `claim_outcome`'s answer; the key is ours until the
    database transaction ends."""
    if idempotency is None:
        return None
    claim = (owner, idempotency.key)
    driver = await store.driver_of(conn)
    locked, stored = await store.claim_keys(driver, [claim], scope=scope, barrier=False)
    return claim_outcome(claim, idempotency, locked, stored)


async def remember(
    conn: AsyncConnection | store.Connection,
    owner: str,
    *,
    idempotency: Idempotency | None,
    status_code: int,
    body: bytes,
    posting_id: uuid.UUID | None = None,
    scope: store.KeyScope = store.PARTNER_KEYS,
    at: datetime | None = None,
) -> None:
    """Store the response under the request's idempotency key (same database transaction)."""
    if idempotency is not None:
        record = store.IdempotencyRecord(
            owner, idempotency.key, idempotency.fingerprint, status_code, body, posting_id
        )
        await store.remember(await store.driver_of(conn), [record], scope=scope, at=at)
