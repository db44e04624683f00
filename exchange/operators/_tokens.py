"""Operator tokens: bearer tokens for the admin and finance roles.

A token is printed once when created; only its SHA-256 is stored, so a database dump
never yields a usable token. Tokens are 256-bit random, which is why a plain hash (not
a slow password hash) is the right tool here.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.errors import NotFound
from exchange.operators import _store
from exchange.operators._records import OperatorIdentity, OperatorToken, Role

__all__ = [
    "OPERATOR_TOKEN_SHAPE",
    "OperatorIdentity",
    "OperatorToken",
    "Role",
    "authenticate_operator",
    "create_operator_token",
    "hash_token",
    "list_operator_tokens",
    "revoke_operator_token",
]

TOKEN_PREFIX = "xop_"  # noqa: S105 - a prefix, not a secret
# What `create_operator_token` issues: the prefix and token_urlsafe(32), 43 characters.
OPERATOR_TOKEN_SHAPE = re.compile(r"xop_[A-Za-z0-9_-]{43}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_operator_token(engine: AsyncEngine, role: Role, name: str) -> tuple[str, str]:
    """Create a token; return (token_id, token). The token is never retrievable again."""
    token_id = "opt_" + secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    await _store.insert_token(
        engine, token_id=token_id, name=name, role=role, token_hash=hash_token(token)
    )
    return token_id, token


async def list_operator_tokens(engine: AsyncEngine) -> list[OperatorToken]:
    return await _store.list_tokens(engine)


async def revoke_operator_token(engine: AsyncEngine, token_id: str) -> None:
    """Revoke a token (idempotent: revoking twice keeps the first revocation time)."""
    if not await _store.revoke_token(engine, token_id):
        raise NotFound(f"No operator token {token_id}.")


async def authenticate_operator(engine: AsyncEngine, token: str) -> OperatorIdentity | None:
    """The identity behind an operator bearer token, or None (unknown or revoked)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    return await _store.find_active_token(engine, hash_token(token))
