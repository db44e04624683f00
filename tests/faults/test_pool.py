"""Dead pooled connections are replaced before anyone uses them: after the server killed
every idle connection, the next requests all succeed (no 503, no 500, no stale reuse)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from exchange.db import create_engine, driver_connection
from exchange.errors import DatabaseUnavailable


async def _warm(engine: object) -> set[int]:
    async def one() -> int:
        async with driver_connection(engine) as conn:  # type: ignore[arg-type]
            pid: int = await conn.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
            return pid

    return set(await asyncio.gather(one(), one(), one()))


async def test_idle_connections_killed_by_the_server_are_replaced_at_checkout(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=3)
    try:
        before = await _warm(engine)
        assert len(before) == 3
        admin = create_engine(database_url, pool_size=1)
        async with admin.begin() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid = ANY(:pids)"
                ),
                {"pids": list(before)},
            )
        await admin.dispose()
        assert killed == 3
        for _ in range(100):  # asyncpg notices the closed sockets on its own, at once
            await asyncio.sleep(0.01)
            if engine.sync_engine.pool.checkedin() == 3:
                break
        after = await _warm(engine)  # every one of these would fail on a dead connection
        assert len(after) == 3
        assert not after & before, "no connection the server killed was used again"
    finally:
        await engine.dispose()


async def test_a_database_that_is_not_there_is_database_unavailable_at_once() -> None:
    engine = create_engine("postgresql://nobody@/none?host=/nonexistent-socket-dir", pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            await asyncio.wait_for(_warm(engine), 5)
        assert caught.value.status == 503
        assert caught.value.reason  # the driver's reason, for the log
    finally:
        await engine.dispose()
