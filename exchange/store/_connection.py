"""The one connection type of the ledger store: asyncpg's, under a pooled connection.

Every store function takes a `Connection`. The hot path gets one from
`exchange.db.driver_connection` and drives its database transaction with `transaction`;
code that already holds a SQLAlchemy `AsyncConnection` (inside `engine.begin()`) reaches
the same driver connection, inside the same database transaction, with `driver_of`.

A ledger transaction plans its statements with sequential scans disabled
(`SET LOCAL enable_seqscan = off`, sent with `BEGIN` in one round trip). Its statements
find rows by key, and their plans are kept per connection (docs/performance.md, "Fourth
round"); a plan made while the journal was nearly empty would otherwise read it whole
until the next `ANALYZE`, at a cost growing with the journal (docs/performance.md,
"Fourteenth round"). A table without an index for a statement is still read
sequentially: the setting only rules the scan out where an index can serve.

It also uses each statement's generic plan from its first execution
(`plan_cache_mode = force_generic_plan`), the plan PostgreSQL settles on anyway after
planning it five times for the parameters at hand: every ledger statement, and every
statement of the functions and checks it calls, did in `pg_stat_statements`. Those five
plannings per statement and connection, paid again by every new connection (a restart,
the hourly `pool_recycle`), cost a short bench scenario several percent of PostgreSQL's
CPU (docs/performance.md, "Eighteenth round").
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["Connection", "LedgerTransaction", "driver_of", "transaction"]

Connection: TypeAlias = asyncpg.Connection

_BEGIN = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan"


class LedgerTransaction:
    """`async with`: BEGIN (planning by key, above), then COMMIT, or ROLLBACK on an error.

    As asyncpg's own transaction block does: an error while rolling back (the connection
    lost) is the one raised, and `exchange.db.driver_connection` then discards the
    connection.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.execute(_BEGIN)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            await self._conn.execute("COMMIT")
        elif not self._conn.is_closed():
            await self._conn.execute("ROLLBACK")


def transaction(conn: Connection) -> LedgerTransaction:
    """A ledger database transaction on `conn` (`async with store.transaction(conn):`)."""
    return LedgerTransaction(conn)


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
