"""Operator token rows: insert, list, revoke, and the lookup by hash."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.operators._records import OperatorIdentity, OperatorToken, Role
from exchange.tables import operator_tokens

__all__ = ["find_active_token", "insert_token", "list_tokens", "revoke_token"]


async def insert_token(
    engine: AsyncEngine, *, token_id: str, name: str, role: Role, token_hash: str
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            operator_tokens.insert().values(
                token_id=token_id, name=name, role=role, token_hash=token_hash
            )
        )


async def list_tokens(engine: AsyncEngine) -> list[OperatorToken]:
    """Every token, revoked ones included, oldest first."""
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


async def revoke_token(engine: AsyncEngine, token_id: str) -> bool:
    """Revoke a token, keeping the first revocation time; False if there is no such token."""
    statement = (
        update(operator_tokens)
        .where(operator_tokens.c.token_id == token_id)
        .values(revoked_at=func.coalesce(operator_tokens.c.revoked_at, func.now()))
        .returning(operator_tokens.c.token_id)
    )
    async with engine.begin() as connection:
        return (await connection.execute(statement)).first() is not None


async def find_active_token(engine: AsyncEngine, token_hash: str) -> OperatorIdentity | None:
    """The identity of the unrevoked token with this hash, or None."""
    query = select(
        operator_tokens.c.token_id, operator_tokens.c.name, operator_tokens.c.role
    ).where(operator_tokens.c.token_hash == token_hash, operator_tokens.c.revoked_at.is_(None))
    async with engine.connect() as connection:
        row = (await connection.execute(query)).first()
    if row is None:
        return None
    return OperatorIdentity(token_id=row.token_id, name=row.name, role=row.role)
