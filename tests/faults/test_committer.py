"""A batch that fails because the database is away fails as a whole, at once: every
request in it gets the same 503, and it is not split into one doomed retry per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.db import create_engine
from exchange.errors import DatabaseUnavailable
from exchange.service import Earn, LedgerRequest, LedgerService, Outcome, Record, Render


class _Counted(LedgerService):
    calls: list[int]

    async def submit(
        self,
        requests: Sequence[LedgerRequest],
        *,
        render: Render | None = None,
        record: Record | None = None,
    ) -> list[Outcome]:
        self.calls.append(len(requests))
        return await super().submit(requests, render=render, record=record)


async def test_a_batch_on_a_missing_database_fails_whole_and_fast() -> None:
    # A real engine on a server that is not there (its socket directory does not exist).
    engine = create_engine("postgresql://nobody@/none?host=/nonexistent-socket-dir", pool_size=2)
    clock = FrozenClock(datetime(2026, 11, 23, 10, tzinfo=UTC))
    ledger = _Counted(engine, clock, points_ttl=timedelta(days=1095))
    ledger.calls = []
    committer = GroupCommitter(ledger, batch_max=50, concurrency=1)
    requests = [LedgerRequest(Earn("grocer", "mem_x", f"o-{i}", points=1)) for i in range(40)]
    try:
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(committer.submit(r) for r in requests), return_exceptions=True), 10
        )
        elapsed_s = time.monotonic() - started
    finally:
        await committer.drain()
        await engine.dispose()
    assert all(isinstance(result, DatabaseUnavailable) for result in results), results[:3]
    assert sum(ledger.calls) == 40, f"each request tried once, none split off: {ledger.calls}"
    assert len(ledger.calls) <= 3
    assert elapsed_s < 5


@pytest.mark.parametrize("batch_max", [1, 7])
async def test_every_waiting_request_gets_the_503(batch_max: int) -> None:
    engine = create_engine("postgresql://nobody@/none?host=/nonexistent-socket-dir", pool_size=1)
    clock = FrozenClock(datetime(2026, 11, 23, 10, tzinfo=UTC))
    ledger = LedgerService(engine, clock, points_ttl=timedelta(days=1095))
    committer = GroupCommitter(ledger, batch_max=batch_max, concurrency=1)
    requests = [LedgerRequest(Earn("grocer", "mem_x", f"o-{i}", points=1)) for i in range(9)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(committer.submit(r) for r in requests), return_exceptions=True), 10
        )
    finally:
        await committer.drain()
        await engine.dispose()
    assert [type(result) for result in results] == [DatabaseUnavailable] * 9
