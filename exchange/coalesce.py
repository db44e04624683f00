"""Coalesced reads: concurrent lookups of one kind share one database round trip.

Under load, requests reach the same read in bursts: a nonce write answers a few dozen
signed requests in one step of the event loop, and each of them then asks for its
member's book. One statement per request costs each of them a round trip (on this
machine's virtual CPUs, about 0.15 ms of the server's CPU for the socket writes and
wake-ups before PostgreSQL has done anything). `Coalescer.get` queues the key; at most
`concurrency` fetches run at once, each taking every key waiting (up to `batch_max`) into
ONE call of `fetch`. At low load a lookup runs alone at once, so nothing waits for a
timer; under load the keys gather while fetches run, as the group committer's requests
do (`exchange.batching`). As there, while a fetch runs another starts only once
`fill_min` keys wait; fewer wait for a running fetch to end and then go together (for
balance reads, 8: 9% more reads a second at 16 clients with 4, and 6-7% more again with
8: docs/performance.md, "Twentieth round" and "Twenty-first round"). A lookup never
waits longer than one running fetch for it, and one that arrives when none runs starts
one at once.

**Never older than the request.** A fetch takes only the keys waiting when it starts, so
its statement starts after every request it answers arrived: a read that follows a
write's response sees that write, as an uncoalesced read would. A key asked for again
while a fetch of it is in flight waits for the next fetch rather than sharing the older
one.

**Failures.** A fetch that raises fails every lookup it carried with that error (the
database away: each request answers 503, as it would alone). Its callers validate keys
before asking, so no one key can make a fetch fail for its neighbours. A lookup whose
caller gave up (its client went away) is skipped; the fetch still finishes for the rest.
A fetch cut short (cancelled at the event loop's end) answers its lookups 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from exchange.errors import ServiceUnavailable

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_CUT_SHORT = "The server stopped before this read was answered; retry."


class Coalescer(Generic[K, V]):
    """Lookups by key, batched into `fetch(keys) -> {key: value}` calls; a key the
    mapping lacks is answered None."""

    def __init__(
        self,
        fetch: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        batch_max: int,
        concurrency: int,
        fill_min: int = 1,
    ) -> None:
        if batch_max < 1 or concurrency < 1 or fill_min < 1:
            raise ValueError("batch_max, concurrency and fill_min must be at least 1")
        self.fetch = fetch
        self.batch_max = batch_max
        self.concurrency = concurrency
        self.fill_min = fill_min
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._tasks: dict[asyncio.Task[None], dict[K, list[asyncio.Future[V | None]]]] = {}
        self.fetches = 0  # calls of `fetch` so far
        self.lookups = 0  # `get`s those calls answered

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and len(self._tasks) < self.concurrency:
            if self._tasks and len(self._waiting) < self.fill_min:
                return  # too few for a statement of their own: they join the next one
            batch: dict[K, list[asyncio.Future[V | None]]] = {}
            for key in list(self._waiting)[: self.batch_max]:
                batch[key] = self._waiting.pop(key)
            task = asyncio.create_task(self._fetch(batch))
            self._tasks[task] = batch
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """In a done-callback, so it runs even for a fetch cancelled before its first step
        (at event-loop teardown): the slot is freed and no waiter is left hanging."""
        for futures in self._tasks.pop(task).values():
            for future in futures:
                if not future.done():
                    future.set_exception(ServiceUnavailable(_CUT_SHORT))
        self._start()

    async def _fetch(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        self.fetches += 1
        self.lookups += sum(len(futures) for futures in batch.values())
        try:
            found = await self.fetch(list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in batch.items():
            value = found.get(key)
            for future in futures:
                if not future.done():  # else its caller gave up
                    future.set_result(value)
