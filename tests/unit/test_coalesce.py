"""Coalesced reads (`exchange.coalesce`): concurrent lookups share a fetch, a lookup is
never answered by a fetch that started before it, and failures reach every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from exchange.coalesce import Coalescer
from exchange.errors import ServiceUnavailable


class Source:
    """A fetch that records the keys of every call, answers `key * 10` (None for negative
    keys: "not found"), and can be held open or made to fail."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.version = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def fetch(self, keys: Sequence[int]) -> Mapping[int, tuple[int, int]]:
        self.calls.append(list(keys))
        version = self.version  # what the "database" held when the statement started
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {key: (key * 10, version) for key in keys if key >= 0}


async def settle() -> None:
    """Let every task that can run, run (a lookup's fetch starts in a task of its own)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_lookup_is_fetched_at_once_alone() -> None:
    source = Source()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=2)
    assert await reads.get(3) == (30, 0)
    assert source.calls == [[3]]


async def test_concurrent_lookups_share_fetches_and_each_gets_its_own_answer() -> None:
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=1)
    first = asyncio.ensure_future(reads.get(0))
    await settle()  # the first fetch is in flight, holding the only slot
    rest = [asyncio.ensure_future(reads.get(key)) for key in [*range(1, 50), 7, -1]]
    await settle()
    source.gate.set()
    assert await first == (0, 0)
    answers = await asyncio.gather(*rest)
    assert answers[:49] == [(key * 10, 0) for key in range(1, 50)]
    assert answers[49] == (70, 0)  # the same key twice in one fetch: both answered
    assert answers[50] is None  # not found
    # One fetch for the first, one for the 50 distinct keys that gathered meanwhile.
    assert source.calls == [[0], [*range(1, 50), -1]]


async def test_a_fetch_takes_at_most_batch_max_keys_and_at_most_concurrency_run() -> None:
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=10, concurrency=2)
    lookups = [asyncio.ensure_future(reads.get(key)) for key in range(35)]
    await settle()
    # The first two lookups each started a fetch at once; the rest waited for a slot.
    assert source.calls == [[0], [1]]
    source.gate.set()
    assert await asyncio.gather(*lookups) == [(key * 10, 0) for key in range(35)]
    assert [len(call) for call in source.calls] == [1, 1, 10, 10, 10, 3]


async def test_while_a_fetch_runs_another_starts_only_once_fill_min_keys_wait() -> None:
    """Before the rule, the second slot fetched each key as it arrived: statements of one
    or two reads beside a running one that would have carried them moments later."""
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=2, fill_min=4)
    held = asyncio.ensure_future(reads.get(0))
    await settle()
    assert source.calls == [[0]]  # none was running: it started at once
    waiting = [asyncio.ensure_future(reads.get(key)) for key in (1, 2, 3)]
    await settle()
    assert source.calls == [[0]]  # three wait for company
    waiting.append(asyncio.ensure_future(reads.get(4)))
    await settle()
    assert source.calls == [[0], [1, 2, 3, 4]]  # the fourth starts a fetch with all four
    left = [asyncio.ensure_future(reads.get(key)) for key in (5, 6)]
    await settle()
    assert len(source.calls) == 2  # both slots busy
    source.gate.set()
    assert await asyncio.gather(held, *waiting, *left) == [(k * 10, 0) for k in range(7)]
    assert source.calls == [[0], [1, 2, 3, 4], [5, 6]]  # the two left went together


async def test_a_lookup_is_never_answered_by_a_fetch_that_started_before_it() -> None:
    """A read that follows a write's response must see the write: a key asked for while
    a fetch of the same key is in flight waits for a fetch that starts after it."""
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=2)
    early = asyncio.ensure_future(reads.get(5))
    await settle()
    assert source.calls == [[5]]
    source.version = 1  # a write commits, and its response is sent
    late = asyncio.ensure_future(reads.get(5))
    await settle()
    source.gate.set()
    assert await early == (50, 0)
    assert await late == (50, 1)
    assert source.calls == [[5], [5]]


async def test_a_failed_fetch_fails_every_lookup_it_carried_and_the_next_fetch_runs() -> None:
    source = Source()
    source.gate = asyncio.Event()
    source.error = ConnectionError("the database went away")
    reads = Coalescer(source.fetch, batch_max=64, concurrency=1)
    lookups = [asyncio.ensure_future(reads.get(key)) for key in range(3)]
    await settle()
    source.gate.set()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    source.error = None
    assert await reads.get(1) == (10, 0)  # nothing stayed taken


async def test_a_caller_that_gives_up_does_not_stop_the_fetch_for_the_others() -> None:
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=1)
    blocker = asyncio.ensure_future(reads.get(100))
    await settle()
    leaving = asyncio.ensure_future(reads.get(1))
    staying = asyncio.ensure_future(reads.get(2))
    await settle()
    leaving.cancel()  # its client went away
    source.gate.set()
    assert await staying == (20, 0)
    assert await blocker == (1000, 0)
    with pytest.raises(asyncio.CancelledError):
        await leaving


@pytest.mark.parametrize("started", [True, False])
async def test_a_fetch_cut_short_answers_its_waiters_503_and_frees_its_slot(
    started: bool,
) -> None:
    """At the event loop's end a fetch is cancelled, possibly before its first step."""
    source = Source()
    source.gate = asyncio.Event()
    reads = Coalescer(source.fetch, batch_max=64, concurrency=1)
    waiter = asyncio.ensure_future(reads.get(1))
    await asyncio.sleep(0)  # the lookup is queued and its fetch task created
    if started:
        await settle()
    (task,) = reads._tasks
    task.cancel()
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiter, 10)
    assert source.calls == ([[1]] if started else [])
    source.gate.set()
    assert await reads.get(2) == (20, 0)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Source().fetch, batch_max=0, concurrency=1)
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Source().fetch, batch_max=1, concurrency=1, fill_min=0)
