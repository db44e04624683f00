"""`BatchService`: accept a batch file (one database transaction), process it in the
background through the same group committer as single requests, report its results.

Exactly once per item, for ever: an item's result is its record. A posted item's result
is written in the ledger's own database transaction, with the posting (`record_results`,
through the group committer's `record`), so a crash keeps both or neither, and an item
is pending exactly while its id has no result. The result's primary key (partner, item
id) makes a second posting impossible, across batches, retries and crashes: two batches
posting the same id at once meet on that key, the second waits for the first's commit
and then rolls back, and its next pass reads the first's result. A refused item's result
is recorded after its chunk (nothing was posted for it; a crash before that leaves it
pending, to be decided again).

Items posted before this (migration 0023) carry the ledger idempotency key
`batch-item:<item_id>`; an upgrade records the result of any such item still pending.

One owner per batch across server processes: the processor holds the batch row locked
(`FOR UPDATE SKIP LOCKED`) while it works; a crash releases the lock, and any process
resumes the batch at its first pending item. Each process runs `processors` of them
(EXCHANGE_BATCH_PROCESSORS), so as many batches progress at once per process. Each holds
its batch's lock on one connection and posts its chunks on one more; the pool adds both for
it (`Settings.db_connections`), so busy processors never take a request's connection.

A stopping server lets each processor finish the chunk it is posting and record its
results, then leaves the rest of the batch pending for the next start (`stop`): the
database work in flight is never cancelled midway. Only a processor that has not
finished within `STOP_GRACE_S` is cancelled, which rolls its chunk back whole.

Throughput: a processor reads a chunk of pending items (one statement), builds the chunk's
ledger requests and commits them as one unit (`GroupCommitter.commit_group`: one database
transaction for the chunk and its posted items' results, split by halves only if it fails
as a whole, so a refused item never affects another), then records the refused items'
results, if any, in one statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.background import finish_or_cancel
from exchange.batches import store
from exchange.batches.commands import item_command
from exchange.batches.parse import Item, decode_item, encode_item, parse_batch
from exchange.batches.schemas import BatchAccepted, BatchResult, BatchResultPage, BatchStatus
from exchange.batches.store import ItemResult, NewItem, PendingItem
from exchange.batching import GroupCommitter
from exchange.clock import Clock
from exchange.errors import BatchNotFound, ExchangeError, RequestInProgress, ServiceUnavailable
from exchange.ids import format_transaction_id
from exchange.ledger import BalanceAfter, Effect
from exchange.logs import get_logger
from exchange.service import (
    BatchEvidence,
    Idempotency,
    LedgerRequest,
    Outcome,
    SignatureProof,
    remember,
    replay_or_claim,
)
from exchange.store import Connection

__all__ = ["BatchService"]

_log = get_logger("exchange.batches")
POLL_S = 1.0
STALL_S = 0.2
STOP_GRACE_S = 30.0  # a chunk takes milliseconds; this is for a database that stalls
CHUNK_MAX = 250  # items per read, per ledger transaction and per results statement
PROCESSORS_DEFAULT = 4  # as EXCHANGE_BATCH_PROCESSORS's default


@dataclass(frozen=True, slots=True)
class _Chunk:
    last: int  # the last position read
    count: int  # items read
    settled: bool  # every item read is decided


class _Posted(msgspec.Struct):
    """A batch item's answer: the one field of a posting that its result keeps."""

    transaction_id: str | None = None


def render_item(effect: Effect, after: BalanceAfter) -> tuple[int, bytes]:
    """How the ledger answers a batch item.

    Only the transaction id: the item's result keeps nothing else (`_posted`), and the
    single endpoint's whole response cost every item a render, 12% of a batch's CPU in the
    process (docs/performance.md, "Sixteenth round")."""
    del after  # the balance after is stored on the posting's row, not in its answer
    return 201, msgspec.json.encode(_Posted(format_transaction_id(effect.posting.posting_id)))


class BatchService:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        committer: GroupCommitter,
        *,
        chunk: int = CHUNK_MAX,
        processors: int = PROCESSORS_DEFAULT,
    ) -> None:
        if chunk < 1 or processors < 1:
            raise ValueError("chunk and processors must be at least 1")
        self.engine = engine
        self.clock = clock
        self.committer = committer
        self.chunk = chunk
        # A chunk is one database transaction in one backend, so a processor uses at most
        # one backend at a time: with 2, a 2-core machine stayed a third idle during
        # batches (docs/performance.md, "Twenty-fifth round").
        self.processors = processors
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def accept(
        self,
        partner_id: str,
        body: bytes,
        media_type: str,
        proof: SignatureProof,
        idempotency: Idempotency | None,
    ) -> Outcome:
        """Store the batch and its items in one database transaction (all or nothing)."""
        items = parse_batch(body, media_type)
        batch_id = f"bat_{secrets.token_hex(12)}"
        async with self.engine.begin() as conn:
            replay = await replay_or_claim(conn, partner_id, idempotency)
            if replay is not None:
                return replay
            await store.insert_batch(
                conn,
                self._batch_row(batch_id, partner_id, len(items), proof),
                _new_items(items),
            )
            response = msgspec.json.encode(BatchAccepted(batch_id, "accepted", len(items)))
            await remember(
                conn, partner_id, idempotency=idempotency, status_code=202, body=response
            )
        self._wake.set()
        return Outcome(202, response)

    def _batch_row(
        self, batch_id: str, partner_id: str, count: int, proof: SignatureProof
    ) -> dict[str, Any]:
        return {
            "batch_id": batch_id,
            "partner_id": partner_id,
            "status": "processing",
            "items": count,
            "posted": 0,
            "rejected": 0,
            "created_at": self.clock.now(),
            "key_id": proof.key_id,
            "signature_input": proof.signature_input,
            "signature": proof.signature,
            "content_digest": proof.content_digest,
            "signature_base": proof.signature_base,
        }

    async def status(self, partner_id: str, batch_id: str) -> BatchStatus:
        async with self.engine.connect() as conn:
            row = await store.get_batch(conn, partner_id, batch_id)
            if row is None:
                raise BatchNotFound(f"No batch {batch_id}.")
            # A completed batch's counts were taken when it completed, in the transaction
            # that completed it, and every item was decided by then: they are final. Only
            # a batch still processing is counted, item by item.
            if row.status == "completed":
                counts = {"posted": row.posted, "rejected": row.rejected}
            else:
                counts = await store.live_counts(conn, batch_id, partner_id)
        return BatchStatus(
            batch_id=row.batch_id,
            status=row.status,
            items=row.items,
            posted=counts.get("posted", 0),
            rejected=counts.get("rejected", 0),
            created_at=row.created_at,
            completed_at=msgspec.UNSET if row.completed_at is None else row.completed_at,
        )

    async def results(
        self, partner_id: str, batch_id: str, after: int, limit: int
    ) -> BatchResultPage:
        async with self.engine.connect() as conn:
            if await store.get_batch(conn, partner_id, batch_id) is None:
                raise BatchNotFound(f"No batch {batch_id}.")
            rows = await store.list_results(conn, batch_id, partner_id, after, limit)
        return BatchResultPage(
            results=[_result_view(row) for row in rows],
            next=str(rows[-1].seq) if len(rows) == limit else msgspec.UNSET,
        )

    # --- processing ---------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._stopping = False
            self._tasks = [
                asyncio.create_task(self._run(), name=f"batch-processor-{n}")
                for n in range(self.processors)
            ]

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let each processor finish its chunk and stop; cancel one still busy after
        `grace_s` (its chunk rolls back whole and stays pending)."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        self._wake.set()
        await finish_or_cancel(tasks, grace_s=grace_s, worker="batch-processor")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                worked = await self.process_next()
            except Exception as exc:  # the database away, a bug: log, wait, resume
                _log.warning("batch_processing_failed", error=type(exc).__name__)
                worked = False
            if worked:
                self._wake.set()  # another batch may be waiting: let idle processors look
            elif not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def process_next(self) -> bool:
        """Process one unfinished batch to its end (or until `stop`); False when there is
        none to own."""
        async with self.engine.connect() as owner, owner.begin():
            batch = await store.claim_next_batch(owner)
            if batch is None:
                return False
            if not await self._process_items(batch.batch_id, batch.partner_id):
                return False  # stopping: the rest stays pending; the lock goes with the owner
            data = await store.complete_batch(owner, batch, self.clock.now())
        _log.info("batch_completed", **data)
        return True

    async def _process_items(self, batch_id: str, partner_id: str) -> bool:
        """Decide every item of the batch, in passes through the file: each pass reads on
        from the last position read, and a pass that left an item undecided (busy in
        another batch, the database away) is followed by another from the start. True once
        a pass has decided everything it read; False when stopping."""
        after, settled = 0, True
        while not self._stopping:
            read = await self._process_chunk(batch_id, partner_id, after)
            if read is not None:
                after, settled = read.last, settled and read.settled
            if read is None or read.count < self.chunk:  # the end of a pass
                if settled:
                    return True
                after, settled = 0, True
        return False

    async def _process_chunk(self, batch_id: str, partner_id: str, after: int) -> _Chunk | None:
        """Post the next undecided items after position `after`; None when there is none."""
        async with self.engine.connect() as conn:
            pending = await store.pending_items(conn, batch_id, partner_id, after, self.chunk)
        if not pending:
            return None
        fresh: list[PendingItem] = []
        seen: set[str] = set()
        for row in pending:
            # A repeated item id takes its first occurrence's result once that is recorded.
            if row.item_id not in seen:
                seen.add(row.item_id)
                fresh.append(row)
        results = [r for r in await self._post(batch_id, partner_id, fresh) if r is not None]
        refused = [r for r in results if r.status != "posted"]  # posted: recorded with it
        if refused:
            async with self.engine.begin() as conn:
                await store.record_results(conn, batch_id, partner_id, refused)
        if not results:
            await asyncio.sleep(STALL_S)  # every item is busy elsewhere: let it finish
        return _Chunk(last=pending[-1].seq, count=len(pending), settled=len(results) == len(fresh))

    async def _post(
        self, batch_id: str, partner_id: str, rows: Sequence[PendingItem]
    ) -> list[ItemResult | None]:
        """Post the chunk's items as one unit; None for an item not decided (it stays
        pending and is tried again)."""
        # The upload's verified signature, stored once with the batch, is the evidence of
        # every posting made from it: `exchange audit` re-verifies it, and the file's digest
        # it covers names the items.
        evidence = BatchEvidence(batch_id)
        results: list[ItemResult | None] = []
        requests: list[LedgerRequest] = []
        posted: list[PendingItem] = []
        for row in rows:
            try:
                command = item_command(partner_id, decode_item(row.payload))
            except ExchangeError as exc:  # refused as its single endpoint would refuse it
                results.append(ItemResult(row.item_id, "rejected", code=exc.code))
                continue
            # No idempotency key: the item's result, written with its posting by `record`
            # below, is its record.
            requests.append(LedgerRequest(command, None, evidence))
            posted.append(row)
        if not requests:
            return results
        item_ids = {id(request): row.item_id for request, row in zip(requests, posted, strict=True)}

        async def record(
            conn: Connection, unit: Sequence[LedgerRequest], outcomes: Sequence[Outcome]
        ) -> None:
            """The posted items' results, in the transaction that posts them."""
            done = [
                _posted(item_ids[id(request)], outcome)
                for request, outcome in zip(unit, outcomes, strict=True)
                if outcome.error is None
            ]
            if not await store.record_results(conn, batch_id, partner_id, done):
                # An id another batch decided while this chunk was posting: roll back. The
                # committer splits the chunk; the item alone stays pending, and the next
                # pass reads its first result.
                raise RequestInProgress()

        try:
            outcomes = await self.committer.commit_group(
                requests, render=render_item, record=record
            )
        except ServiceUnavailable:
            return results  # the database away or too busy: the rest stays pending
        results += [_from_outcome(r, o) for r, o in zip(posted, outcomes, strict=True)]
        return results


def _posted(item_id: str, outcome: Outcome) -> ItemResult:
    answer = msgspec.json.decode(outcome.body, type=_Posted)
    return ItemResult(item_id, "posted", transaction_id=answer.transaction_id)


def _from_outcome(row: PendingItem, outcome: Outcome) -> ItemResult | None:
    if outcome.error is not None:
        if isinstance(outcome.error, ServiceUnavailable | RequestInProgress):
            return None
        return ItemResult(row.item_id, "rejected", code=outcome.error.code)
    return _posted(row.item_id, outcome)


def _new_items(items: Sequence[Item]) -> list[NewItem]:
    return [
        NewItem(seq, item.item_id, encode_item(item)) for seq, item in enumerate(items, start=1)
    ]


def _result_view(row: Any) -> BatchResult:
    return BatchResult(
        item_id=row.item_id,
        status=row.status,
        transaction_id=msgspec.UNSET if row.transaction_id is None else row.transaction_id,
        code=msgspec.UNSET if row.code is None else row.code,
    )
