"""A whole book reads its own holds' draws, never every draw in the journal (migration 0025).

`ledger_books` loads the lots a member's open holds drew from. Its generic plan, the one
the posting path forces, once read every `draw` allocation in the table for each book,
so a burn cost more with every burn ever posted. These tests post other members' burns,
then read a book as the posting path does and count the allocation index entries that
one read returned: only the member's own holds' draws. A balance read, whose statement
has the same join in its own text, is held to the same.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import driver_connection
from exchange.service import Burn, Earn, LedgerService, OpenHold
from exchange.store._members import read_books_with_qualifying
from tests.support import add_partner, enrol, post

OTHER_BURNS = 40

# As the posting path's transactions (exchange.store._connection): generic plans.
_BEGIN_PLANNED = "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = {}"
_BEGIN = _BEGIN_PLANNED.format("force_generic_plan")
_BOOKS = "SELECT lots FROM ledger_books($1::text[], '{}', '{}', NULL)"
_DRAWS_READ = """SELECT pg_stat_get_xact_tuples_returned('pk_allocations'::regclass)
                      + pg_stat_get_xact_tuples_returned('ix_allocations_lot_id'::regclass)"""


async def _draws_read_by_a_book(engine: AsyncEngine, member: str) -> int:
    """Allocation index entries returned while reading the member's whole book, twice (the
    second read runs the plan PL/pgSQL keeps)."""
    async with driver_connection(engine) as conn:
        await conn.execute(_BEGIN)
        try:
            for _ in range(2):
                assert await conn.fetchval(_BOOKS, [member]) is not None
            read: int = await conn.fetchval(_DRAWS_READ)
        finally:
            await conn.execute("ROLLBACK")
    return read


async def _journal_with_burns(ledger: LedgerService, clock: FrozenClock) -> None:
    """Another member's OTHER_BURNS burns: as many draws in the table, after statistics
    taken while it was empty, as a new exchange's are until autovacuum analyzes it again
    (the estimate that chose the scan of every draw: one row)."""
    async with driver_connection(ledger.engine) as conn:
        await conn.execute("ANALYZE allocations")
    await add_partner(ledger.engine, clock)
    other = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", other, "stock", points=10 * OTHER_BURNS))
    for n in range(OTHER_BURNS):
        await post(ledger, Burn("grocer", other, 1, f"b{n}"))


async def test_a_book_without_holds_reads_no_draw(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await _journal_with_burns(ledger, clock)
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "e", points=50))
    assert await _draws_read_by_a_book(engine, member) == 0


async def _member_with_a_hold(ledger: LedgerService, clock: FrozenClock) -> str:
    """After another member's burns: a member whose open hold drew on two lots."""
    await _journal_with_burns(ledger, clock)
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "e1", points=5))
    await post(ledger, Earn("grocer", member, "e2", points=5))
    await post(ledger, OpenHold("grocer", member, 8, "h"))  # draws on both lots
    return member


async def test_a_book_with_a_hold_reads_that_holds_draws_alone(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    member = await _member_with_a_hold(ledger, clock)
    read = await _draws_read_by_a_book(engine, member)
    # The hold's two draws, for each of two reads, and once more for the holds' own
    # listing (its draws, by the same key): nowhere near the other member's draws.
    assert 0 < read <= 3 * 2 * 2, read


async def test_a_balance_read_reads_its_holds_draws_alone(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """The balance read's statement joins the member's open holds with their draws in its
    own text (`exchange.store._reads.book_columns`), not through `ledger_books`: the same
    must hold there, in the custom plans and in the generic one a prepared statement may
    switch to."""
    member = await _member_with_a_hold(ledger, clock)
    since = clock.now() - timedelta(days=365)
    for plans in ("auto", "force_generic_plan"):
        async with driver_connection(engine) as conn:
            await conn.execute(_BEGIN_PLANNED.format(plans))
            try:
                for _ in range(2):
                    books, _ = await read_books_with_qualifying(
                        conn, [(member, None)], since=since, due_by=None
                    )
                    assert books[(member, None)][0].holds, "the hold is in the book"
                read: int = await conn.fetchval(_DRAWS_READ)
            finally:
                await conn.execute("ROLLBACK")
        # The hold's two draws, found by both parts of the statement (its lots, and the
        # hold's own listing), at most twice over in a plan, in each of two reads; the
        # other member's draws alone would be 2 x 40.
        assert 0 < read <= 2 * 2 * 2 * 2, (plans, read)
