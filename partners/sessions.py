"""Member sessions: short-lived bearer tokens a partner obtains for a member it serves.

Only the token's SHA-256 is stored; a token is useless after `expires_at`. The token is
part of the idempotent response, so a retried request returns the same token.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

import msgspec

from exchange.errors import MemberNotFound
from exchange.operators import hash_token
from exchange.runtime import Services
from exchange.schemas import SessionCreated
from exchange.service import Idempotency, Outcome, remember, replay_or_claim
from exchange.store import is_linked, translate_errors
from partners import store

__all__ = ["MEMBER_TOKEN_SHAPE", "SESSION_TTL_S_DEFAULT", "create_member_session"]

SESSION_TTL_S_DEFAULT = 900
TOKEN_PREFIX = "xmt_"  # noqa: S105 - a prefix, not a secret
# What `create_member_session` issues: the prefix and token_urlsafe(32), 43 characters.
MEMBER_TOKEN_SHAPE = re.compile(r"xmt_[A-Za-z0-9_-]{43}")


async def create_member_session(
    services: Services,
    *,
    partner_id: str,
    member_id: str,
    ttl_seconds: int | None,
    idempotency: Idempotency | None,
) -> Outcome:
    now = services.clock.now()
    async with services.engine.begin() as conn:
        with translate_errors():
            earlier = await replay_or_claim(conn, partner_id, idempotency)
            if earlier is not None:
                return earlier
            if not await is_linked(conn, member_id, partner_id):
                raise MemberNotFound(f"No member {member_id} linked to {partner_id}.")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            expires_at = now + timedelta(seconds=ttl_seconds or SESSION_TTL_S_DEFAULT)
            await store.create_session(
                conn,
                token_hash=hash_token(token),
                member_id=member_id,
                partner_id=partner_id,
                created_at=now,
                expires_at=expires_at,
            )
            body = msgspec.json.encode(SessionCreated(token=token, expires_at=expires_at))
            await remember(conn, partner_id, idempotency=idempotency, status_code=201, body=body)
    return Outcome(201, body)
