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


# -- references (migration 0016: checked per statement, parents kept) ------------------------

_POSTING = (
    "INSERT INTO postings (posting_id, type, member_id, partner_id, points, reverses,"
    " unit_price, currency, posted_at) VALUES (gen_random_uuid(), {type}, {member},"
    " {partner}, 1, {reverses}, {price}, {currency}, now())"
)
_LOT = (
    "INSERT INTO lots (lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,"
    " available_at, expires_at, matured, created_at, source_lot_id)"
    " SELECT gen_random_uuid(), {member}, {issuer}, {earn}, 1, 1, unit_price, available_at,"
    " expires_at, matured, created_at, {source} FROM lots LIMIT 1"
)
# The burn's posting has no lot of its own, so a copied lot may name it as its earn.
_BURN = "(SELECT posting_id FROM postings WHERE type = 'burn')"
_LOT_OK = {"member": "member_id", "issuer": "issuer_id", "earn": _BURN, "source": "NULL"}
_MISSING_POSTING = "'00000000-0000-7000-8000-000000000000'"


@pytest.mark.parametrize(
    ("sql", "missing"),
    [
        (
            _POSTING.format(type="'maturation'", member="'mem_nope'", partner="NULL",
                            reverses="NULL", price="NULL", currency="NULL"),
            "members.member_id mem_nope",
        ),
        (
            _POSTING.format(type="'maturation'", member=":member", partner="'nope'",
                            reverses="NULL", price="NULL", currency="NULL"),
            "partners.partner_id nope",
        ),
        (
            _POSTING.format(type="'earn_reversal'", member=":member", partner="'grocer'",
                            reverses=_MISSING_POSTING + "::uuid", price="1", currency="'EUR'"),
            "postings.posting_id 00000000-0000-7000-8000-000000000000",
        ),
        (
            "INSERT INTO postings (posting_id, type, member_id, points, posted_at, batch_id)"
            " VALUES (gen_random_uuid(), 'maturation', :member, 1, now(), 'bat_nope')",
            "batches.batch_id bat_nope",
        ),
        (
            "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at)"
            " SELECT p.id::uuid, v.line, 'available', :member, v.amount, now()"
            " FROM (VALUES (" + _MISSING_POSTING + ")) AS p(id), (VALUES (0, 3), (1, -3))"
            " AS v(line, amount)",
            "postings.posting_id 00000000-0000-7000-8000-000000000000",
        ),
        (_LOT.format(**(_LOT_OK | {"member": "'mem_nope'"})), "members.member_id mem_nope"),
        (_LOT.format(**(_LOT_OK | {"issuer": "'nope'"})), "partners.partner_id nope"),
        (
            _LOT.format(**(_LOT_OK | {"earn": _MISSING_POSTING + "::uuid"})),
            "postings.posting_id 00000000-0000-7000-8000-000000000000",
        ),
        (
            _LOT.format(**(_LOT_OK | {"source": _MISSING_POSTING + "::uuid"})),
            "lots.lot_id 00000000-0000-7000-8000-000000000000",
        ),
    ],
    ids=[
        "posting-member", "posting-partner", "posting-reverses", "posting-batch", "entry-posting",
        "lot-member", "lot-issuer", "lot-earn", "lot-source",
    ],
)  # fmt: skip
async def test_a_row_naming_a_missing_parent_is_refused_and_changes_nothing(
    engine: AsyncEngine, member: str, sql: str, missing: str
) -> None:
    async with engine.connect() as conn:
        before = (await conn.execute(text(_COUNTS))).one()
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(sql), {"member": member})
    assert f"refers to {missing} that does not exist" in str(caught.value.orig)
    # foreign_key_violation, as a foreign key says (SQLAlchemy's asyncpg error carries it)
    assert getattr(caught.value.orig, "sqlstate", None) == "23503"
    async with engine.connect() as conn:
        assert (await conn.execute(text(_COUNTS))).one() == before


async def test_a_lot_copied_with_every_parent_present_is_accepted(
    engine: AsyncEngine, member: str
) -> None:
    # The control for the refusals above: the same statement with real parents passes.
    async with engine.begin() as conn:
        await conn.execute(text(_LOT.format(**_LOT_OK)))


async def test_one_orphan_refuses_a_statement_of_many_rows_whole(
    engine: AsyncEngine, member: str
) -> None:
    async with engine.connect() as conn:
        before = (await conn.execute(text(_COUNTS))).one()
    # A balanced pair for each of the member's two postings and one for a missing posting.
    message = await _refused(
        engine,
        "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at)"
        " SELECT p.posting_id, v.line, 'available', '" + member + "', v.amount, now()"
        " FROM (SELECT posting_id FROM postings UNION ALL SELECT "
        + _MISSING_POSTING
        + "::uuid) AS p, (VALUES (8, 3), (9, -3)) AS v(line, amount)",
    )
    # The row refused is named, though each distinct parent is probed once (0022).
    assert (
        "entries row 00000000-0000-7000-8000-000000000000 refers to postings.posting_id"
        " 00000000-0000-7000-8000-000000000000 that does not exist" in message
    )
    async with engine.connect() as conn:
        assert (await conn.execute(text(_COUNTS))).one() == before


@pytest.mark.usefixtures("member")
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM members",
        "DELETE FROM partners",
        "DELETE FROM lots",
        "TRUNCATE members CASCADE",
        "TRUNCATE partners CASCADE",
        "TRUNCATE lots CASCADE",
        "UPDATE members SET member_id = member_id || 'x'",
        "UPDATE partners SET partner_id = partner_id || 'x' WHERE partner_id = 'grocer'",
        "UPDATE lots SET lot_id = gen_random_uuid()",
        "UPDATE lots SET member_id = member_id || 'x'",
        "UPDATE lots SET issuer_id = 'operator'",
        f"UPDATE lots SET earn_id = {_BURN}",
    ],
)
async def test_the_journals_parents_are_never_deleted_nor_rekeyed(
    engine: AsyncEngine, sql: str
) -> None:
    message = await _refused(engine, sql)
    assert "referred to by the journal" in message


async def test_a_parents_other_columns_still_change(engine: AsyncEngine, member: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE members SET member_id = member_id, debt = debt"))
        await conn.execute(text("UPDATE lots SET member_id = member_id, remaining = remaining"))


_COUNTS = "SELECT (SELECT count(*) FROM postings), (SELECT count(*) FROM entries), " \
    "(SELECT count(*) FROM lots)"  # fmt: skip


# -- a batch's items and results (migration 0019) ---------------------------------------------

_BATCH = (
    "INSERT INTO batches (batch_id, partner_id, status, items, posted, rejected, created_at,"
    " key_id, signature_input, signature, signature_base)"
    " VALUES ('bat_1', 'grocer', 'processing', 2, 0, 0, now(), 'k', 'i', 's', 'b')"
)
_ITEMS = "INSERT INTO batch_items (batch_id, seq, item_id, payload) VALUES {rows}"
_RESULTS = "INSERT INTO batch_item_results (partner_id, item_id, status, batch_id) VALUES {rows}"
_BATCH_COUNTS = (
    "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM batch_items),"
    " (SELECT count(*) FROM batch_item_results)"
)


@pytest.fixture
async def batch(engine: AsyncEngine, member: str) -> str:
    async with engine.begin() as conn:
        await conn.execute(text(_BATCH))
        await conn.execute(text(_ITEMS.format(rows="('bat_1', 1, 'a', '{}')")))
    return "bat_1"


@pytest.mark.usefixtures("batch")
@pytest.mark.parametrize(
    ("sql", "missing"),
    [
        (_ITEMS.format(rows="('bat_nope', 1, 'a', '{}')"), "refers to batches.batch_id bat_nope"),
        # one orphan among rows whose batch exists: the statement is refused whole
        (
            _ITEMS.format(rows="('bat_1', 2, 'b', '{}'), ('bat_nope', 1, 'a', '{}')"),
            "refers to batches.batch_id bat_nope",
        ),
        # the refused row is named by its position (migration 0022)
        (
            _ITEMS.format(rows="('bat_1', 3, 'c', '{}'), ('bat_nope', 7, 'a', '{}')"),
            "batch_items row 7 refers to batches.batch_id bat_nope",
        ),
        (
            _RESULTS.format(rows="('nope', 'a', 'posted', 'bat_1')"),
            "refers to partners.partner_id nope",
        ),
    ],
    ids=["item-batch", "item-batch-among-many", "item-named", "result-partner"],
)
async def test_a_batch_row_naming_a_missing_parent_is_refused_and_changes_nothing(
    engine: AsyncEngine, sql: str, missing: str
) -> None:
    async with engine.connect() as conn:
        before = (await conn.execute(text(_BATCH_COUNTS))).one()
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    assert f"{missing} that does not exist" in str(caught.value.orig)
    assert getattr(caught.value.orig, "sqlstate", None) == "23503"
    async with engine.connect() as conn:
        assert (await conn.execute(text(_BATCH_COUNTS))).one() == before


@pytest.mark.usefixtures("batch")
async def test_items_and_results_with_their_parents_are_accepted(engine: AsyncEngine) -> None:
    # The control for the refusals above.
    async with engine.begin() as conn:
        await conn.execute(text(_ITEMS.format(rows="('bat_1', 2, 'b', '{}')")))
        await conn.execute(text(_RESULTS.format(rows="('grocer', 'a', 'posted', 'bat_1')")))
    async with engine.connect() as conn:
        assert (await conn.execute(text(_BATCH_COUNTS))).one() == (1, 2, 1)


@pytest.mark.usefixtures("batch")
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM batches",
        "TRUNCATE batches CASCADE",
        "UPDATE batches SET batch_id = batch_id || 'x'",
    ],
)
async def test_a_batch_is_never_deleted_nor_rekeyed(engine: AsyncEngine, sql: str) -> None:
    message = await _refused(engine, sql)
    assert "batches are referred to by their items" in message


@pytest.mark.usefixtures("batch")
async def test_a_batch_is_still_completed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE batches SET batch_id = batch_id, status = 'completed', posted = 1")
        )


async def test_a_posting_has_one_evidence_at_most(engine: AsyncEngine, member: str) -> None:
    # Its own signature or its batch's, never both (ck_postings_evidence).
    async with engine.begin() as conn:
        await conn.execute(text(_BATCH))
    message = await _refused(
        engine,
        "INSERT INTO postings (posting_id, type, member_id, points, posted_at, batch_id,"
        " signature_key_id, signature_input, signature, signature_base) VALUES"
        f" (gen_random_uuid(), 'maturation', '{member}', 1, now(), 'bat_1', 'k', 'i', 's', 'b')",
    )
    assert "ck_postings_evidence" in message
