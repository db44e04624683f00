"""The scheduler's election: a transaction-level PostgreSQL advisory try-lock."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["try_scheduler_lock"]


async def try_scheduler_lock(conn: AsyncConnection, key: int) -> bool:
    """Take the advisory lock `key` until the connection's database transaction ends (or
    the connection dies: it is never leaked); False if another session holds it."""
    got = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
    return bool(got)
