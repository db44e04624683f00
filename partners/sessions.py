"""Member sessions: short-lived bearer tokens a partner obtains for a member it serves.

Only the token's SHA-256 is stored, in the session table and nowhere else: the stored
idempotent response keeps the member and `expires_at` but not the token, so a replay
gets a fresh token for the same member and expiry (docs/operations.md, "Security").
A token is useless after `expires_at` (at most an hour after it was issued).
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import MemberNotFound
from exchange.operators import hash_token
from exchange.schemas import SessionCreated
from exchange.service import Idempotency, Outcome, remember, replay_or_claim
from exchange.store import driver_of, is_linked, translate_errors
from exchange.wiring import Services
from partners import store

__all__ = ["MEMBER_TOKEN_SHAPE", "SESSION_TTL_S_DEFAULT", "create_member_session"]

SESSION_TTL_S_DEFAULT = 900
TOKEN_PREFIX = "xmt_"  # noqa: S105 - a prefix, not a secret
# What `create_member_session` issues: the prefix and token_urlsafe(32), 43 characters.
MEMBER_TOKEN_SHAPE = re.compile(r"xmt_[A-Za-z0-9_-]{43}")


class _StoredSession(msgspec.Struct, frozen=True):
    """What the idempotency record keeps of a session response: never the token."""

    member_id: str
    expires_at: datetime


async def create_member_session(
    services: Services,
    *,
    partner_id: str,
    member_id: str,
    ttl_seconds: int | None,
    idempotency: Idempotency | None,
) -> Outcome:
    """A new member token. The idempotency record stores the response without the token
    (a bearer credential is only ever stored as its hash); a replay answers the original
    status and `expires_at` with a fresh token for the same member and expiry."""
    now = services.clock.now()
    async with services.engine.begin() as conn:
        with translate_errors():
            earlier = await replay_or_claim(conn, partner_id, idempotency)
            if earlier is not None:
                return await _reissue(conn, earlier, partner_id, now)
            if not await is_linked(await driver_of(conn), member_id, partner_id):
                raise MemberNotFound(f"No member {member_id} linked to {partner_id}.")
            expires_at = now + timedelta(seconds=ttl_seconds or SESSION_TTL_S_DEFAULT)
            token = await _issue(conn, member_id, partner_id, now, expires_at)
            stored = msgspec.json.encode(_StoredSession(member_id, expires_at))
            await remember(conn, partner_id, idempotency=idempotency, status_code=201, body=stored)
    return Outcome(201, msgspec.json.encode(SessionCreated(token=token, expires_at=expires_at)))


async def _issue(
    conn: AsyncConnection, member_id: str, partner_id: str, now: datetime, expires_at: datetime
) -> str:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.create_session(
        conn,
        token_hash=hash_token(token),
        member_id=member_id,
        partner_id=partner_id,
        created_at=now,
        expires_at=expires_at,
    )
    return token


async def _reissue(
    conn: AsyncConnection, earlier: Outcome, partner_id: str, now: datetime
) -> Outcome:
    try:
        stored = msgspec.json.decode(earlier.body, type=_StoredSession)
    except msgspec.ValidationError:
        # Stored before tokens were kept out of idempotency records: such a record holds
        # its token itself (and it expired within an hour of being issued).
        return earlier
    token = await _issue(conn, stored.member_id, partner_id, now, stored.expires_at)
    body = msgspec.json.encode(SessionCreated(token=token, expires_at=stored.expires_at))
    return Outcome(earlier.status_code, body, replayed=True)
