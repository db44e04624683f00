"""`store.transaction`, the database transaction of every ledger write, on real PostgreSQL:
it commits, rolls back, never nests, and plans the store's statements once per connection
without leaking that setting to the connection's next user."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.db import driver_connection, libpq_url


class Boom(Exception):
    pass


_PLANS_SQL = """
SELECT coalesce(sum(generic_plans), 0) AS generic, coalesce(sum(custom_plans), 0) AS custom
FROM pg_prepared_statements WHERE statement LIKE '%closed_until FROM ledger_state%'
  AND statement NOT LIKE '%pg_prepared_statements%'
"""


async def _lock_nobody(conn: store.Connection, times: int, *, in_transaction: bool) -> None:
    for index in range(times):
        if in_transaction:
            async with store.transaction(conn):
                await store.lock_members(conn, [f"mem_nobody_{index}"])
        else:
            await store.lock_members(conn, [f"mem_nobody_{index}"])


async def test_the_stores_statements_are_planned_once_not_on_every_call(
    engine: AsyncEngine,
) -> None:
    """PostgreSQL plans a prepared statement with an array parameter anew on every call
    (its custom plan always looks cheaper than the generic one): 0.7 ms of its CPU per
    posting batch. Inside `store.transaction` the generic plan is used from the first call;
    outside it (the control) the same statement is custom-planned every time."""
    url = libpq_url(engine.url.render_as_string(hide_password=False))
    found = {}
    for in_transaction in (False, True):
        conn = await asyncpg.connect(url)  # new: no statement prepared yet
        try:
            await _lock_nobody(conn, 8, in_transaction=in_transaction)
            found[in_transaction] = await conn.fetchrow(_PLANS_SQL)
        finally:
            await conn.close()
    control, inside = found[False], found[True]
    assert control is not None
    assert inside is not None
    # PostgreSQL's own rule: five custom plans first, then (maybe) the generic one.
    assert control["custom"] >= 5, control
    assert inside["custom"] == 0, inside
    assert inside["generic"] >= 8, inside


async def test_the_plan_setting_ends_with_the_transaction(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as conn:
        async with store.transaction(conn):
            inside = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
        after = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
    assert (inside, after) == ("force_generic_plan", "auto")


async def test_a_block_that_raises_is_rolled_back_and_the_connection_stays_usable(
    engine: AsyncEngine,
) -> None:
    async with driver_connection(engine) as conn:
        await conn.execute("CREATE TEMPORARY TABLE scratch (n int)")

        async def insert_then_fail() -> None:
            async with store.transaction(conn):
                await conn.execute("INSERT INTO scratch VALUES (1)")
                raise Boom

        with pytest.raises(Boom):
            await insert_then_fail()
        assert not conn.is_in_transaction()
        async with store.transaction(conn):
            await conn.execute("INSERT INTO scratch VALUES (2)")
        assert [row["n"] for row in await conn.fetch("SELECT n FROM scratch")] == [2]


async def test_a_failed_statement_rolls_back_with_its_own_error(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as conn:

        async def divide_by_zero() -> None:
            async with store.transaction(conn):
                await conn.execute("SELECT 1 / 0")

        with pytest.raises(asyncpg.DivisionByZeroError):
            await divide_by_zero()
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT 1") == 1


async def test_transactions_do_not_nest(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as conn, store.transaction(conn):

        async def nest() -> None:
            async with store.transaction(conn):
                pass

        with pytest.raises(RuntimeError, match="does not nest"):
            await nest()
