"""A batch item's result is its record: written in the transaction that posts the item,
so the two commit together or not at all, and the result's key (partner, item id) is what
posts an item once, for ever, across batches (exchange/batches/service.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches.service import BatchService
from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.db import create_engine
from exchange.errors import RequestInProgress
from exchange.service import Earn, LedgerRequest, LedgerService, Outcome, SignatureProof
from exchange.store import Connection
from tests.support import (
    add_partner,
    assert_ledger_verifies,
    enrol,
    until_a_session_waits_for_a_lock,
)

_PROOF = SignatureProof("grocer-key", 'sig1=("@method")', ":c2ln:", None, b"base")


def _earns(member: str, ids: Sequence[str], points: dict[str, int]) -> bytes:
    items = [
        {"item_id": i, "type": "earn", "member_id": member, "reference": i, "points": points[i]}
        for i in ids
    ]
    return msgspec.json.encode({"items": items})


async def _accept(batches: BatchService, body: bytes) -> str:
    accepted = await batches.accept("grocer", body, "application/json", _PROOF, None)
    batch_id: str = msgspec.json.decode(accepted.body)["batch_id"]
    return batch_id


async def _results(batches: BatchService, batch_id: str) -> dict[str, tuple[str, str | None]]:
    page = await batches.results("grocer", batch_id, 0, 1000)
    return {
        r.item_id: (r.status, r.transaction_id if isinstance(r.transaction_id, str) else None)
        for r in page.results
    }


async def test_a_record_that_refuses_rolls_its_postings_back_and_the_group_splits(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """The committer's `record` runs in each transaction it commits, for that transaction's
    requests: refusing one request's record rolls back that transaction, and the split
    commits every other request with its record."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    requests = [LedgerRequest(Earn("grocer", member, f"r-{n}", points=n)) for n in (1, 2, 4, 8)]
    recorded: list[list[int]] = []

    async def record(
        conn: Connection, unit: Sequence[LedgerRequest], outcomes: Sequence[Outcome]
    ) -> None:
        points = [getattr(r.command, "points", 0) for r in unit]
        assert all(o.error is None for o in outcomes)
        assert await conn.fetchval("SELECT count(*) FROM postings WHERE type = 'earn'") > 0
        if 4 in points:
            raise RequestInProgress()
        recorded.append(points)

    committer = GroupCommitter(ledger, batch_max=64, concurrency=1)
    outcomes = await committer.commit_group(requests, record=record)

    assert [type(o.error).__name__ for o in outcomes] == [
        "NoneType",
        "NoneType",
        "RequestInProgress",
        "NoneType",
    ]
    assert recorded == [[1, 2], [8]]  # the whole group, its half with 4, then 4 alone refused
    assert (await ledger.read_balance(member)).available == 1 + 2 + 8
    await assert_ledger_verifies(engine)


async def test_an_item_another_batch_decides_while_its_chunk_posts_is_not_posted_again(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock, database_url: str
) -> None:
    """Another batch records item `x`'s result while this batch's chunk is posting `x`:
    the chunk's record waits for that batch's commit, finds `x` decided, and rolls the
    chunk back. Its other items post on their own; `x` takes the other batch's result and
    is not posted a second time."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    batches = BatchService(engine, clock, GroupCommitter(ledger, batch_max=64, concurrency=1))
    points = {"y-1": 1, "x": 100, "y-2": 10}
    batch_id = await _accept(batches, _earns(member, ["y-1", "x", "y-2"], points))

    other = await asyncpg.connect(database_url)
    try:
        await other.execute(
            "INSERT INTO batches (batch_id, partner_id, status, items, posted, rejected,"
            " created_at, key_id, signature_input, signature, content_digest, signature_base)"
            " SELECT 'bat_other', partner_id, 'completed', 1, 1, 0, created_at, key_id,"
            " signature_input, signature, content_digest, signature_base"
            " FROM batches WHERE batch_id = $1",
            batch_id,
        )
        async with other.transaction():
            await other.execute(
                "INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id,"
                " batch_id) VALUES ('grocer', 'x', 'posted', 'txn_elsewhere', 'bat_other')"
            )
            processing = asyncio.create_task(batches.process_next())
            await until_a_session_waits_for_a_lock(engine, "the chunk's record")
            assert not processing.done()
        assert await processing
    finally:
        await other.close()

    results = await _results(batches, batch_id)
    assert results["x"] == ("posted", "txn_elsewhere")
    assert {status for status, _ in results.values()} == {"posted"}
    assert len({txn for _, txn in results.values()}) == 3
    assert (await ledger.read_balance(member)).available == 1 + 10  # not x's 100
    status = await batches.status("grocer", batch_id)
    assert (status.status, status.posted, status.rejected) == ("completed", 3, 0)
    await assert_ledger_verifies(engine)


async def test_two_processes_posting_batches_that_share_item_ids_post_each_id_once(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock, database_url: str
) -> None:
    """Two server processes (each its own pool and committer) work at once on two batches
    that carry the same 120 item ids, one in the file's order and one reversed: each id
    is posted once, and both batches give it the same result."""
    await add_partner(engine, clock)
    members = [await enrol(ledger, "grocer") for _ in range(3)]
    ids = [f"s-{n}" for n in range(120)]
    points = {item_id: n + 1 for n, item_id in enumerate(ids)}
    items = [
        {"item_id": i, "type": "earn", "member_id": members[n % 3], "reference": i,
         "points": points[i]}
        for n, i in enumerate(ids)
    ]  # fmt: skip
    second_engine = create_engine(database_url, pool_size=10)
    try:
        second_ledger = LedgerService(second_engine, clock, points_ttl=ledger.points_ttl)
        one = BatchService(
            engine, clock, GroupCommitter(ledger, batch_max=64, concurrency=1), chunk=16
        )
        two = BatchService(
            second_engine,
            clock,
            GroupCommitter(second_ledger, batch_max=64, concurrency=1),
            chunk=16,
        )
        first = await _accept(one, msgspec.json.encode({"items": items}))
        second = await _accept(one, msgspec.json.encode({"items": items[::-1]}))
        assert await asyncio.gather(one.process_next(), two.process_next()) == [True, True]
    finally:
        await second_engine.dispose()

    results_one = await _results(one, first)
    results_two = await _results(one, second)
    assert results_one == results_two
    assert {status for status, _ in results_one.values()} == {"posted"}
    assert len({txn for _, txn in results_one.values()}) == len(ids)
    balances = [(await ledger.read_balance(m)).available for m in members]
    assert sum(balances) == sum(points.values())
    async with engine.connect() as conn:
        postings = await conn.execute(
            text("SELECT count(*) FROM postings WHERE batch_id IN (:one, :two)"),
            {"one": first, "two": second},
        )
        assert postings.scalar() == len(ids)
    await assert_ledger_verifies(engine)
