"""Group commit: concurrent posting requests share database transactions.

Requests queue; at most `concurrency` batches run at once, each taking up to
`batch_max` queued requests into one `LedgerService.submit` (one database transaction,
one commit, one WAL flush). At low load a request runs alone at once, so nothing waits
for a timer; under load the queue fills while batches run, and the next batch takes
everything waiting. Throughput then grows with load instead of queueing on commits.

The queue is bounded (`queue_max`): past it a request is refused at once with
`ServiceUnavailable` (503 with Retry-After; the partner retries with the same key) rather
than waiting behind a backlog that only grows while the database cannot keep up.

A batch that fails as a whole (a bug, or a refusal one request provoked) is split and
its requests retried one by one, so one bad request never fails its neighbours. A batch
that failed because the database is away is not split: every
request in it gets the same 503 at once, as retrying them one by one against a database
that is not there would only multiply the wait. Such a batch is one database transaction
that did not commit, or whose commit we never heard back about: either way each request
is retried by its client with the same Idempotency-Key, which posts it exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Sequence

from exchange import metrics
from exchange.errors import DatabaseUnavailable, ServiceUnavailable, Unprocessable
from exchange.logs import get_logger
from exchange.service import LedgerRequest, LedgerService, Outcome

__all__ = ["GroupCommitter"]

_log = get_logger("exchange.batching")
QUEUE_MAX_DEFAULT = 1000  # as EXCHANGE_GROUP_COMMIT_QUEUE_MAX's default


class GroupCommitter:
    def __init__(
        self,
        ledger: LedgerService,
        *,
        batch_max: int,
        concurrency: int,
        queue_max: int = QUEUE_MAX_DEFAULT,
    ) -> None:
        if batch_max < 1 or concurrency < 1 or queue_max < 1:
            raise ValueError("batch_max, concurrency and queue_max must be at least 1")
        self.ledger = ledger
        self.batch_max = batch_max
        self.concurrency = concurrency
        self.queue_max = queue_max
        self._queue: deque[tuple[LedgerRequest, asyncio.Future[Outcome]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.requests = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not those in a running batch)."""
        return len(self._queue)

    async def submit(self, request: LedgerRequest) -> Outcome:
        """Queue one request; resolve with its outcome once its batch has committed.

        A request carrying a value PostgreSQL cannot store is refused here, before it
        joins a batch: otherwise its data error would fail the whole batch's database
        transaction and every neighbour would be re-run one by one.
        """
        _refuse_unstorable(request)
        if len(self._queue) >= self.queue_max:
            raise ServiceUnavailable(
                "Too many postings are waiting to be committed; retry shortly with the "
                "same Idempotency-Key."
            )
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        while self._queue and self._running < self.concurrency:
            size = min(self.batch_max, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            self._running += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[LedgerRequest, asyncio.Future[Outcome]]]) -> None:
        try:
            await self._commit(batch)
        finally:
            self._running -= 1
            self._start_batches()

    async def _commit(self, batch: Sequence[tuple[LedgerRequest, asyncio.Future[Outcome]]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            outcomes = await self.ledger.submit([request for request, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, DatabaseUnavailable):
                for _, future in batch:
                    _resolve_error(future, exc)
                return
            _log.warning("batch_failed_splitting", size=len(batch), error=type(exc).__name__)
            for item in batch:
                await self._commit([item])
            return
        metrics.observe_batch((r.command, o) for (r, _), o in zip(batch, outcomes, strict=True))
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def drain(self) -> None:
        """Wait for every queued and running batch (at shutdown)."""
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                self._start_batches()


def _refuse_unstorable(request: LedgerRequest) -> None:
    """PostgreSQL text cannot hold NUL; the HTTP edge refuses it first, this is the
    ledger's own guard for any other caller."""
    command = request.command
    for field in dataclasses.fields(command):
        value = getattr(command, field.name)
        if isinstance(value, str) and "\x00" in value:
            raise Unprocessable(f"{field.name} contains a NUL character.")


def _resolve_error(future: asyncio.Future[Outcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
