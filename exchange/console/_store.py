"""Console session rows: keyed by the sha256 of the cookie secret, tied to an operator
token (a revoked token's sessions no longer resolve). The rules are
`exchange.console.sessions`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.operators import OperatorIdentity
from exchange.tables import console_sessions, operator_tokens

__all__ = ["delete_session", "find_session_operator", "insert_session"]


async def insert_session(
    engine: AsyncEngine, *, session_hash: str, token_id: str, now: datetime, expires_at: datetime
) -> None:
    """Store a new session, purging the expired ones in the same database transaction."""
    async with engine.begin() as conn:
        await conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
        await conn.execute(
            insert(console_sessions).values(
                session_hash=session_hash,
                token_id=token_id,
                created_at=now,
                expires_at=expires_at,
            )
        )


async def find_session_operator(
    engine: AsyncEngine, session_hash: str, now: datetime
) -> OperatorIdentity | None:
    """The operator of an unexpired session whose token is not revoked."""
    query = (
        select(operator_tokens.c.token_id, operator_tokens.c.name, operator_tokens.c.role)
        .select_from(console_sessions.join(operator_tokens))
        .where(
            console_sessions.c.session_hash == session_hash,
            console_sessions.c.expires_at > now,
            operator_tokens.c.revoked_at.is_(None),
        )
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return OperatorIdentity(token_id=row.token_id, name=row.name, role=row.role)


async def delete_session(engine: AsyncEngine, session_hash: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            delete(console_sessions).where(console_sessions.c.session_hash == session_hash)
        )
