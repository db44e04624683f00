"""The one connection type of the ledger store: asyncpg's, under a pooled connection.

Every store function takes a `Connection`. The hot path gets one from
`exchange.db.driver_connection` and drives its database transaction with `transaction`;
code that already holds a SQLAlchemy `AsyncConnection` (inside `engine.begin()`) reaches
the same driver connection, inside the same database transaction, with `driver_of`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.transaction import Transaction
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["Connection", "driver_of", "transaction"]

Connection: TypeAlias = asyncpg.Connection


def transaction(conn: Connection) -> Transaction:
    """A database transaction on `conn` (`async with store.transaction(conn):`)."""
    return conn.transaction()


async def driver_of(conn: AsyncConnection | Connection) -> Connection:
    """The asyncpg connection under `conn`, in `conn`'s database transaction if it has one.

    SQLAlchemy sends BEGIN lazily, with its first statement. A store statement sent before
    that would bypass it and run in autocommit, outside the database transaction the
    caller's `engine.begin()` commits or rolls back; so the transaction is begun here (the
    same single BEGIN SQLAlchemy would send).
    """
    if isinstance(conn, asyncpg.Connection):
        return conn
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    if not isinstance(driver, asyncpg.Connection):
        raise TypeError(f"expected an asyncpg connection, got {type(driver).__name__}")
    if conn.in_transaction() and not driver.is_in_transaction():
        adapted: Any = fairy.dbapi_connection
        start = getattr(adapted, "_start_transaction", None)  # SQLAlchemy's own lazy BEGIN
        if start is not None:
            await start()
        else:  # a SQLAlchemy without it: any statement through SQLAlchemy begins
            await conn.exec_driver_sql("SELECT 1")
    return driver
