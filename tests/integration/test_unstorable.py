"""A request PostgreSQL cannot store never costs its group-commit neighbours anything."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.errors import Unprocessable
from exchange.service import Earn, LedgerRequest, LedgerService, Outcome
from tests.support import add_partner, assert_ledger_verifies, enrol


async def test_a_nul_byte_is_refused_before_the_batch_and_its_neighbours_share_one_commit(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    committer = GroupCommitter(ledger, batch_max=64, concurrency=1)
    good = [LedgerRequest(Earn("grocer", member, f"o-{i}", points=5)) for i in range(10)]
    bad = LedgerRequest(Earn("grocer", member, "o-\x00", points=5))
    results = await asyncio.gather(
        *(committer.submit(request) for request in [*good[:5], bad, *good[5:]]),
        return_exceptions=True,
    )
    assert isinstance(results[5], Unprocessable)
    assert all(isinstance(r, Outcome) and r.status_code == 201 for r in results[:5] + results[6:])
    # Ten good requests, no re-runs one by one: the bad one never joined a batch.
    assert committer.requests == 10
    assert committer.batches <= 2
    totals = await assert_ledger_verifies(engine)
    assert totals["issued"] == 50


async def test_a_data_error_from_postgresql_is_a_422_not_a_500(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """The store's own net: a class-22 error from the driver becomes Unprocessable."""
    await add_partner(engine, clock, "grocer")
    with pytest.raises(Unprocessable):
        await ledger.enrol_member("grocer", "card-\x00", None)
