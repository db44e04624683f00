"""Operator tokens: bearer tokens for the admin and finance roles.

A token is printed once when created; only its SHA-256 is stored, so a database dump
never yields a usable token. Tokens are 256-bit random, which is why a plain hash (not
a slow password hash) is the right tool here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.errors import NotFound
from exchange.tables import operator_tokens

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

Role = Literal["admin", "finance"]
TOKEN_PREFIX = "xop_"  # noqa: S105 - a prefix, not a secret
# What `create_operator_token` issues: the prefix and token_urlsafe(32), 43 characters.
OPERATOR_TOKEN_SHAPE = re.compile(r"xop_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    token_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class OperatorToken:
    token_id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_operator_token(engine: AsyncEngine, role: Role, name: str) -> tuple[str, str]:
    """Create a token; return (token_id, token). The token is never retrievable again."""
    token_id = "opt_" + secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    async with engine.begin() as connection:
        await connection.execute(
            operator_tokens.insert().values(
                token_id=token_id, name=name, role=role, token_hash=hash_token(token)
            )
        )
    return token_id, token


async def list_operator_tokens(engine: AsyncEngine) -> list[OperatorToken]:
    query = select(operator_tokens).order_by(
        operator_tokens.c.created_at, operator_tokens.c.token_id
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).mappings().all()
    return [
        OperatorToken(
            token_id=row["token_id"],
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )
        for row in rows
    ]


async def revoke_operator_token(engine: AsyncEngine, token_id: str) -> None:
    """Revoke a token (idempotent: revoking twice keeps the first revocation time)."""
    statement = (
        update(operator_tokens)
        .where(operator_tokens.c.token_id == token_id)
        .values(revoked_at=func.coalesce(operator_tokens.c.revoked_at, func.now()))
        .returning(operator_tokens.c.token_id)
    )
    async with engine.begin() as connection:
        if (await connection.execute(statement)).first() is None:
            raise NotFound(f"No operator token {token_id}.")


async def authenticate_operator(engine: AsyncEngine, token: str) -> OperatorIdentity | None:
    """The identity behind an operator bearer token, or None (unknown or revoked)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    query = select(
        operator_tokens.c.token_id, operator_tokens.c.name, operator_tokens.c.role
    ).where(
        operator_tokens.c.token_hash == hash_token(token), operator_tokens.c.revoked_at.is_(None)
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None:
        return None
    return OperatorIdentity(token_id=row.token_id, name=row.name, role=row.role)
