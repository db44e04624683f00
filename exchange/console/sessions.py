"""Console sign-ins: server-side session rows keyed by the hash of the cookie.

The cookie carries 256 random bits; the database keeps only their sha256 (as for operator
tokens), so a database dump yields no usable session. A session is valid while it has not
expired, has not been signed out, and its operator token has not been revoked: revoking a
token on the CLI ends its console sessions at once.

The CSRF token of a session is an HMAC of a constant under the session secret: forms carry
it, an attacker's page can neither read the cookie nor compute the token, and nothing more
needs storing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import Clock
from exchange.console import _store
from exchange.operators import OperatorIdentity, authenticate_operator, hash_token

__all__ = [
    "SESSION_TTL",
    "ConsoleSession",
    "csrf_token_for",
    "end_session",
    "find_session",
    "start_session",
]

SESSION_TTL = timedelta(hours=8)  # a working day; then sign in again


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    identity: OperatorIdentity
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.identity.role == "admin"


def csrf_token_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"console-csrf-v1", hashlib.sha256).hexdigest()


async def start_session(
    engine: AsyncEngine, clock: Clock, token: str
) -> tuple[OperatorIdentity, str] | None:
    """Sign in with an operator token: (identity, cookie secret), or None for a token
    that is unknown or revoked. Expired sessions are purged on the way."""
    identity = await authenticate_operator(engine, token)
    if identity is None:
        return None
    secret = secrets.token_urlsafe(32)
    now = clock.now()
    await _store.insert_session(
        engine,
        session_hash=hash_token(secret),
        token_id=identity.token_id,
        now=now,
        expires_at=now + SESSION_TTL,
    )
    return identity, secret


async def find_session(engine: AsyncEngine, clock: Clock, secret: str) -> ConsoleSession | None:
    identity = await _store.find_session_operator(engine, hash_token(secret), clock.now())
    if identity is None:
        return None
    return ConsoleSession(identity, csrf_token_for(secret))


async def end_session(engine: AsyncEngine, secret: str) -> None:
    await _store.delete_session(engine, hash_token(secret))
