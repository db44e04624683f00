"""Group commit: many concurrent requests share transactions, and stay independent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.errors import InvariantViolation
from exchange.service import Burn, Earn, LedgerRequest, LedgerService, Outcome
from tests.support import add_partner, assert_ledger_verifies, enrol


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

    class Fragile(LedgerService):
        """Fails any batch that contains the poisoned reference (as a bug would)."""

        async def submit(self, requests: Sequence[LedgerRequest]) -> list[Outcome]:
            if any(getattr(r.command, "reference", None) == "poison" for r in requests):
                raise InvariantViolation("simulated bug")
            return await super().submit(requests)

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
