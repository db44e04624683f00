"""The database guards the ledger's invariants by itself, and `verify` finds tampering."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.service import Burn, Earn, LedgerService
from exchange.verify import verify_ledger
from tests.support import add_partner, assert_ledger_verifies, enrol, post


@pytest.fixture
async def member(ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock) -> str:
    await add_partner(engine, clock, "grocer")
    member_id = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member_id, "o", points=100))
    await post(ledger, Burn("grocer", member_id, 30))
    return member_id


async def _refused(engine: AsyncEngine, sql: str) -> str:
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    return str(caught.value.orig)


@pytest.mark.usefixtures("member")
@pytest.mark.parametrize("table", ["postings", "entries", "allocations"])
async def test_journal_tables_refuse_update_delete_and_truncate(
    engine: AsyncEngine, table: str
) -> None:
    column = {"postings": "points", "entries": "amount", "allocations": "points"}[table]
    assert "append-only" in await _refused(engine, f"UPDATE {table} SET {column} = {column} + 1")
    assert "append-only" in await _refused(engine, f"DELETE FROM {table}")
    assert "append-only" in await _refused(engine, f"TRUNCATE {table} CASCADE")


async def test_unbalanced_entries_are_refused(engine: AsyncEngine, member: str) -> None:
    message = await _refused(
        engine,
        "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at) "
        "SELECT posting_id, 9, 'available', member_id, 5, posted_at FROM postings LIMIT 1",
    )
    assert "does not balance" in message


async def test_entries_balance_per_posting_not_per_statement(
    engine: AsyncEngine, member: str
) -> None:
    # +5 on one posting and -5 on another sum to zero together: each posting is unbalanced.
    message = await _refused(
        engine,
        "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at) "
        "SELECT posting_id, 9, 'available', member_id, "
        "CASE WHEN type = 'earn' THEN 5 ELSE -5 END, posted_at FROM postings "
        "WHERE member_id = '" + member + "'",
    )
    assert "does not balance" in message


async def test_a_balanced_pair_may_still_be_appended(engine: AsyncEngine, member: str) -> None:
    # What the guard promises: every posting's entries sum to zero, whenever they came.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at) "
                "SELECT posting_id, line, 'available', :member, amount, posted_at FROM "
                "(SELECT posting_id, posted_at FROM postings WHERE member_id = :member "
                "AND type = 'earn') AS p, (VALUES (8, 3), (9, -3)) AS v(line, amount)"
            ),
            {"member": member},
        )
        totals = await conn.execute(text("SELECT sum(amount) FROM entries GROUP BY posting_id"))
        assert {total for (total,) in totals} == {0}


async def test_nothing_may_be_posted_into_a_closed_period(
    engine: AsyncEngine, member: str, clock: FrozenClock
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE ledger_state SET closed_until = :t"),
            {"t": clock.now() + timedelta(hours=1)},
        )
    # Stamped a day before the test clock's cut-off: inside the closed period whatever the
    # real date (the database's now() is never compared with the frozen clock).
    inside = clock.now() - timedelta(days=1)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO postings (posting_id, type, member_id, points, posted_at) "
                    "VALUES (gen_random_uuid(), 'maturation', :member, 1, :at)"
                ),
                {"member": member, "at": inside},
            )
    assert "closed settlement period" in str(caught.value.orig)


async def test_verify_reports_a_tampered_lot_and_balance(engine: AsyncEngine, member: str) -> None:
    await assert_ledger_verifies(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE lots SET remaining = remaining + 5"))
    report = await verify_ledger(engine)
    checks = {d.check for d in report.discrepancies}
    assert {"lot_remaining", "member_balance", "partner_counters"} <= checks
    lot = next(d for d in report.discrepancies if d.check == "lot_remaining")
    assert (lot.expected, lot.actual) == ("70", "75")
    balance = next(d for d in report.discrepancies if d.check == "member_balance")
    assert balance.subject == member
    assert "available=75" in balance.expected
    assert "available=70" in balance.actual


async def test_verify_reports_a_member_debt_out_of_line(engine: AsyncEngine, member: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE members SET debt = 3"))
    report = await verify_ledger(engine)
    assert [d.check for d in report.discrepancies] == ["member_balance"]
    assert report.totals["outstanding"] == 70
