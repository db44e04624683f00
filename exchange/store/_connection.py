"""The one connection type of the ledger store: asyncpg's, under a pooled connection.

Every store function takes a `Connection`. The hot path gets one from
`exchange.db.driver_connection` and drives its database transaction with `transaction`;
code that already holds a SQLAlchemy `AsyncConnection` (inside `engine.begin()`) reaches
the same driver connection, inside the same database transaction, with `driver_of`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["Connection", "driver_of", "transaction"]

Connection: TypeAlias = asyncpg.Connection


# The store's statements have a fixed shape and take their values as arrays or JSON, so a
# plan made once per connection fits every call; PostgreSQL would otherwise plan several
# of them anew on every execution (a custom plan always looks cheaper than the generic
# one for an array parameter of unknown length): 0.7 ms of PostgreSQL's CPU per posting
# batch, more than its whole write (docs/performance.md, "Plans"). Transaction-local, so
# the setting never leaks to other users of the pooled connection; sent with BEGIN, in
# one round trip.
_BEGIN = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"


@contextlib.asynccontextmanager
async def transaction(conn: Connection) -> AsyncIterator[None]:
    """A database transaction on `conn` (`async with store.transaction(conn):`), with
    generic plans for the store's prepared statements. Committed when the block ends,
    rolled back when it raises; a connection the rollback could not reach is left in its
    transaction, which `exchange.db.driver_connection` sees and throws away."""
    if conn.is_in_transaction():
        raise RuntimeError("store.transaction does not nest")
    await conn.execute(_BEGIN)
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            # The block's own error says why; a failed rollback must not replace it.
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


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
