"""Group commit: concurrent posting requests share database transactions.

Requests queue; at most `concurrency` batches run at once, each taking up to
`batch_max` queued requests into one `LedgerService.submit` (one database transaction,
one commit, one WAL flush). At low load a request runs alone at once, so nothing waits
for a timer; under load the queue fills while batches run, and the next batch takes
everything waiting. Throughput then grows with load instead of queueing on commits.

While a batch runs, another starts only once `fill_min` requests wait; fewer wait for a
running batch to end and then go together. Without that rule the second slot took each
request as it arrived, so at 16 clients batches carried 2.5 earns at 1 ms of CPU each;
with it they carry 4-7 (docs/performance.md, "Nineteenth round"). A request never waits
longer than one running batch for it, and one that arrives when no batch runs starts one
at once.

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

`commit_group` is the batch files' way in: a caller that already holds many requests
(a chunk of a batch) commits them as ONE unit, without queueing them one by one, with the
same split-on-failure (by halves, down to single requests) and the same refusal of what
PostgreSQL cannot store. Its callers bound how many groups run at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from exchange import metrics
from exchange.errors import DatabaseUnavailable, ExchangeError, ServiceUnavailable, Unprocessable
from exchange.logs import get_logger
from exchange.service import LedgerRequest, LedgerService, Outcome, Record, Render

__all__ = ["GroupCommitter"]

_log = get_logger("exchange.batching")
QUEUE_MAX_DEFAULT = 1000  # as EXCHANGE_GROUP_COMMIT_QUEUE_MAX's default
_CUT_SHORT = "The server stopped before this posting's batch finished; retry with the same key."


class GroupCommitter:
    def __init__(
        self,
        ledger: LedgerService,
        *,
        batch_max: int,
        concurrency: int,
        fill_min: int = 1,
        queue_max: int = QUEUE_MAX_DEFAULT,
    ) -> None:
        if batch_max < 1 or concurrency < 1 or fill_min < 1 or queue_max < 1:
            raise ValueError("batch_max, concurrency, fill_min and queue_max must be at least 1")
        self.ledger = ledger
        self.batch_max = batch_max
        self.concurrency = concurrency
        self.fill_min = fill_min
        self.queue_max = queue_max
        self._queue: deque[tuple[LedgerRequest, asyncio.Future[Outcome]]] = deque()
        # Running batches, with their requests: at most `concurrency`.
        self._tasks: dict[asyncio.Task[None], list[tuple[LedgerRequest, asyncio.Future[Outcome]]]]
        self._tasks = {}
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
        while self._queue and len(self._tasks) < self.concurrency:
            if self._tasks and len(self._queue) < self.fill_min:
                return  # too few for a transaction of their own: they join the next batch
            size = min(self.batch_max, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            task = asyncio.create_task(self._commit(batch))
            self._tasks[task] = batch
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """In a done-callback, so it runs even for a batch cancelled before its first step
        (at event-loop teardown): its slot is freed and none of its requests is left
        waiting for ever: each is answered 503, to be retried with its Idempotency-Key (a
        batch cancelled mid-commit may or may not have committed; the key decides)."""
        for _, future in self._tasks.pop(task):
            _resolve_error(future, ServiceUnavailable(_CUT_SHORT))
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

    async def commit_group(
        self,
        requests: Sequence[LedgerRequest],
        *,
        render: Render | None = None,
        record: Record | None = None,
    ) -> list[Outcome]:
        """Commit the requests as one database transaction; one outcome per request, in order.

        A request PostgreSQL cannot store is refused on its own. A group that fails as a
        whole is split in halves and each half committed alone, down to single requests,
        so a request that breaks a transaction never decides another's outcome; an error
        of a single request becomes its outcome. The database away (`ServiceUnavailable`)
        is raised for the whole group at once: nothing in it is decided. `record` writes
        the caller's rows in each transaction, for the requests that transaction carries
        (the whole group, or a part of it after a split).
        """
        outcomes: list[Outcome | None] = [None] * len(requests)
        storable: list[int] = []
        for index, request in enumerate(requests):
            try:
                _refuse_unstorable(request)
            except Unprocessable as exc:
                outcomes[index] = Outcome(error=exc)
            else:
                storable.append(index)
        if storable:
            done = await self._commit_unit([requests[index] for index in storable], render, record)
            for index, outcome in zip(storable, done, strict=True):
                outcomes[index] = outcome
        return [outcome or Outcome() for outcome in outcomes]

    async def _commit_unit(
        self, requests: Sequence[LedgerRequest], render: Render | None, record: Record | None
    ) -> list[Outcome]:
        self.batches += 1
        self.requests += len(requests)
        try:
            outcomes = await self.ledger.submit(requests, render=render, record=record)
        except ServiceUnavailable:
            raise  # the database away or too busy: splitting would only multiply the wait
        except Exception as exc:
            if len(requests) == 1:
                if isinstance(exc, ExchangeError):
                    return [Outcome(error=exc)]
                raise
            _log.warning("group_failed_splitting", size=len(requests), error=type(exc).__name__)
            half = len(requests) // 2
            return [
                *await self._commit_unit(requests[:half], render, record),
                *await self._commit_unit(requests[half:], render, record),
            ]
        metrics.observe_batch((r.command, o) for r, o in zip(requests, outcomes, strict=True))
        return outcomes

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
    for name in command.__struct_fields__:  # a tuple kept on the class: free to read
        value = getattr(command, name)
        if isinstance(value, str) and "\x00" in value:
            raise Unprocessable(f"{name} contains a NUL character.")


def _resolve_error(future: asyncio.Future[Outcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
