"""Group commit: many concurrent requests share transactions, and stay independent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.errors import (
    DatabaseUnavailable,
    InvariantViolation,
    ServiceUnavailable,
    Unprocessable,
)
from exchange.service import Burn, Earn, LedgerRequest, LedgerService, Outcome, Record, Render
from tests.support import add_partner, assert_ledger_verifies, enrol


class _Intercepted(LedgerService):
    """A ledger whose `submit` first hands each transaction's requests to `intercept`,
    which a test overrides to count, fail or hold them."""

    async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
        pass

    async def submit(
        self,
        requests: Sequence[LedgerRequest],
        *,
        render: Render | None = None,
        record: Record | None = None,
    ) -> list[Outcome]:
        await self.intercept(requests)
        return await super().submit(requests, render=render, record=record)


async def test_concurrent_requests_share_batches_and_all_commit(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    members = [await enrol(ledger, "grocer") for _ in range(20)]
    committer = GroupCommitter(ledger, batch_max=64, concurrency=2)
    requests = [
        LedgerRequest(Earn("grocer", members[i % 20], f"o-{i}", points=10)) for i in range(200)
    ]
    outcomes = await asyncio.gather(*(committer.submit(request) for request in requests))
    assert [outcome.status_code for outcome in outcomes] == [201] * 200
    assert committer.requests == 200
    assert committer.batches < 200, "requests arriving together must share transactions"
    totals = await assert_ledger_verifies(engine)
    assert totals["issued"] == 2000
    assert totals["outstanding"] == 2000


async def test_a_failing_request_is_isolated_and_others_still_commit(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")

    class Fragile(_Intercepted):
        """Fails any batch that contains the poisoned reference (as a bug would)."""

        async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
            if any(getattr(r.command, "reference", None) == "poison" for r in requests):
                raise InvariantViolation("simulated bug")

    fragile = Fragile(engine, clock, points_ttl=ledger.points_ttl)
    committer = GroupCommitter(fragile, batch_max=64, concurrency=1)
    earns = [LedgerRequest(Earn("grocer", member, f"o-{i}", points=5)) for i in range(30)]
    poison = LedgerRequest(Earn("grocer", member, "poison", points=5))
    too_much = LedgerRequest(Burn("grocer", member, 10_000))
    results = await asyncio.gather(
        *(committer.submit(request) for request in [*earns, poison, too_much]),
        return_exceptions=True,
    )
    assert all(isinstance(r, Outcome) and r.status_code == 201 for r in results[:30])
    assert isinstance(results[30], InvariantViolation)
    assert isinstance(results[31], Outcome)
    assert results[31].error is not None
    assert results[31].error.code == "insufficient_points"
    async with engine.connect() as conn:
        earned = await conn.scalar(text("SELECT sum(points) FROM postings WHERE type = 'earn'"))
    assert earned == 150
    await assert_ledger_verifies(engine)


async def test_a_group_is_one_transaction_and_a_failing_request_is_split_out_by_halves(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    calls: list[int] = []

    class Fragile(_Intercepted):
        """Fails any transaction that contains the poisoned reference (as a bug would)."""

        async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
            calls.append(len(requests))
            if any(getattr(r.command, "reference", None) == "poison" for r in requests):
                raise InvariantViolation("simulated bug")

    committer = GroupCommitter(
        Fragile(engine, clock, points_ttl=ledger.points_ttl), batch_max=4, concurrency=1
    )
    clean = [LedgerRequest(Earn("grocer", member, f"c-{i}", points=1)) for i in range(50)]
    assert [o.status_code for o in await committer.commit_group(clean)] == [201] * 50
    assert calls == [50], "a group is one transaction, whatever batch_max says"

    calls.clear()
    earns = [LedgerRequest(Earn("grocer", member, f"o-{i}", points=5)) for i in range(40)]
    poison = LedgerRequest(Earn("grocer", member, "poison", points=5))
    nul = LedgerRequest(Earn("grocer", member, "o-\x00", points=5))
    too_much = LedgerRequest(Burn("grocer", member, 10_000))
    outcomes = await committer.commit_group([*earns[:20], poison, nul, too_much, *earns[20:]])
    assert [o.status_code for o in outcomes[:20] + outcomes[23:]] == [201] * 40
    assert isinstance(outcomes[20].error, InvariantViolation)
    assert isinstance(outcomes[21].error, Unprocessable)  # refused before the transaction
    assert outcomes[22].error is not None
    assert outcomes[22].error.code == "insufficient_points"
    assert calls[0] == 42  # the NUL one never joined the transaction
    assert len(calls) < 20, f"split by halves, not one by one: {calls}"
    async with engine.connect() as conn:
        earned = await conn.scalar(text("SELECT sum(points) FROM postings WHERE type = 'earn'"))
    assert earned == 50 + 200
    await assert_ledger_verifies(engine)


async def test_a_group_meeting_the_database_away_is_not_split_and_decides_nothing(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    calls: list[int] = []

    class Away(_Intercepted):
        async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
            calls.append(len(requests))
            raise DatabaseUnavailable("simulated outage")

    committer = GroupCommitter(
        Away(engine, clock, points_ttl=ledger.points_ttl), batch_max=64, concurrency=1
    )
    earns = [LedgerRequest(Earn("grocer", member, f"o-{i}", points=5)) for i in range(30)]
    with pytest.raises(ServiceUnavailable):
        await committer.commit_group(earns)
    assert calls == [30]
    totals = await assert_ledger_verifies(engine)
    assert totals["issued"] == 0


@pytest.mark.parametrize("started", [True, False])
async def test_a_batch_cut_short_answers_503_and_the_next_batch_runs(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock, started: bool
) -> None:
    """At the event loop's end a batch task is cancelled, possibly before its first step:
    its requests are answered 503 (retry with the same key), never left waiting, and
    the committer's slot is free for the next batch."""
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    gate = asyncio.Event()

    class Held(_Intercepted):
        async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
            await gate.wait()

    committer = GroupCommitter(
        Held(engine, clock, points_ttl=ledger.points_ttl), batch_max=64, concurrency=1
    )
    waiting = asyncio.ensure_future(committer.submit(LedgerRequest(Earn("grocer", member, "a", 5))))
    await asyncio.sleep(0)  # queued, and its batch's task created
    if started:
        for _ in range(5):
            await asyncio.sleep(0)
    (batch,) = committer._tasks
    batch.cancel()
    with pytest.raises(ServiceUnavailable, match="same key"):
        await asyncio.wait_for(waiting, 10)  # before: waited for ever
    gate.set()
    outcome = await committer.submit(LedgerRequest(Earn("grocer", member, "b", 5)))
    assert outcome.status_code == 201
    totals = await assert_ledger_verifies(engine)
    assert totals["issued"] == 5


async def test_while_a_batch_runs_another_starts_only_once_fill_min_requests_wait(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """With a batch in flight, fewer than `fill_min` waiting requests do not take the free
    slot: they wait for the running batch to end and go together. The `fill_min`-th takes
    the slot at once, with all of them. A request arriving when no batch runs starts one."""
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    gate = asyncio.Event()
    sizes: list[int] = []

    class Held(_Intercepted):
        async def intercept(self, requests: Sequence[LedgerRequest]) -> None:
            sizes.append(len(requests))
            if any(getattr(r.command, "reference", None) == "held" for r in requests):
                await gate.wait()

    committer = GroupCommitter(
        Held(engine, clock, points_ttl=ledger.points_ttl),
        batch_max=64,
        concurrency=2,
        fill_min=4,
    )

    def earn(reference: str) -> asyncio.Future[Outcome]:
        return asyncio.ensure_future(
            committer.submit(LedgerRequest(Earn("grocer", member, reference, points=1)))
        )

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    held = earn("held")
    await settle()
    assert sizes == [1]  # nothing was running: it started at once
    three = [earn(f"a-{n}") for n in range(3)]
    await settle()
    assert (sizes, committer.queued) == ([1], 3)  # a slot is free, but 3 < fill_min
    fourth = earn("a-3")
    first_four = await asyncio.wait_for(asyncio.gather(*three, fourth), 10)
    assert sizes == [1, 4]
    assert [o.status_code for o in first_four] == [201] * 4
    two = [earn(f"b-{n}") for n in range(2)]
    await settle()
    assert (sizes, committer.queued) == ([1, 4], 2)
    gate.set()  # the running batch ends: the two waiting go together
    outcomes = await asyncio.wait_for(asyncio.gather(held, *two), 10)
    assert [o.status_code for o in outcomes] == [201] * 3
    assert sizes == [1, 4, 2]
    totals = await assert_ledger_verifies(engine)
    assert totals["issued"] == 7
