"""`BatchService`: accept a batch file (one database transaction), process it in the
background through the same group committer as single requests, report its results.

Exactly once per item, for ever: each item posts under the ledger idempotency key
`batch-item:<item_id>` (`exchange.batches.commands`), so the ledger's UNIQUE key makes a
second posting impossible — across batches, retries and crashes. After a crash between a
posting's commit and the recording of its result, the item is still `pending`; it is
submitted again and the ledger replays its first answer (same transaction id).

One owner per batch across server processes: the processor holds the batch row locked
(`FOR UPDATE SKIP LOCKED`) while it works; a crash releases the lock, and any process
resumes the batch at its first pending item.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches import store
from exchange.batches.commands import item_command, item_idempotency
from exchange.batches.parse import Item, parse_batch
from exchange.batches.store import ItemResult
from exchange.batching import GroupCommitter
from exchange.clock import Clock
from exchange.errors import BatchNotFound, ExchangeError, RequestInProgress, ServiceUnavailable
from exchange.logs import get_logger
from exchange.service import (
    Idempotency,
    LedgerRequest,
    Outcome,
    SignatureProof,
    remember,
    replay_or_claim,
)

__all__ = ["BatchService"]

_log = get_logger("exchange.batches")
POLL_S = 1.0
STALL_S = 0.2


class _Accepted(msgspec.Struct, frozen=True):
    batch_id: str
    status: str
    items: int


class BatchService:
    def __init__(self, engine: AsyncEngine, clock: Clock, committer: GroupCommitter) -> None:
        self.engine = engine
        self.clock = clock
        self.committer = committer
        # Items in flight at once: enough to fill group commits, never the whole queue.
        self.chunk = max(1, min(500, committer.queue_max // 2))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
                _rows(batch_id, items),
            )
            response = msgspec.json.encode(_Accepted(batch_id, "accepted", len(items)))
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

    async def status(self, partner_id: str, batch_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get_batch(conn, partner_id, batch_id)
            if row is None:
                raise BatchNotFound(f"No batch {batch_id}.")
            counts = await store.live_counts(conn, batch_id)
        view: dict[str, Any] = {
            "batch_id": row.batch_id,
            "status": row.status,
            "items": row.items,
            "posted": counts.get("posted", 0),
            "rejected": counts.get("rejected", 0),
            "created_at": row.created_at,
        }
        if row.completed_at is not None:
            view["completed_at"] = row.completed_at
        return view

    async def results(
        self, partner_id: str, batch_id: str, after: int, limit: int
    ) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            if await store.get_batch(conn, partner_id, batch_id) is None:
                raise BatchNotFound(f"No batch {batch_id}.")
            rows = await store.list_results(conn, batch_id, after, limit)
        results = [_result_view(row) for row in rows]
        page: dict[str, Any] = {"results": results}
        if len(rows) == limit:
            page["next"] = str(rows[-1].seq)
        return page

    # --- processing ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batch-processor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                worked = await self.process_next()
            except Exception as exc:  # the database away, a bug: log, wait, resume
                _log.warning("batch_processing_failed", error=type(exc).__name__)
                worked = False
            if not worked:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def process_next(self) -> bool:
        """Process one unfinished batch to its end; False when there is none to own."""
        async with self.engine.connect() as owner, owner.begin():
            batch = await store.claim_next_batch(owner)
            if batch is None:
                return False
            # The upload's verified signature is stored with every posting of the batch:
            # `exchange audit` re-verifies it, and the file's digest it covers names the items.
            proof = SignatureProof(
                key_id=batch.key_id,
                signature_input=batch.signature_input,
                signature=batch.signature,
                content_digest=batch.content_digest,
                signature_base=bytes(batch.signature_base),
            )
            while await self._process_chunk(batch.batch_id, batch.partner_id, proof):
                pass
            data = await store.complete_batch(owner, batch, self.clock.now())
        _log.info("batch_completed", **data)
        return True

    async def _process_chunk(self, batch_id: str, partner_id: str, proof: SignatureProof) -> bool:
        """Post the next pending items; False when none is left."""
        async with self.engine.connect() as conn:
            pending = await store.pending_items(conn, batch_id, self.chunk)
            if not pending:
                return False
            known = await store.first_results(conn, partner_id, [r.item_id for r in pending])
        results, fresh, seen = [], [], set()
        for row in pending:
            first = known.get(row.item_id)
            if first is not None:
                results.append(
                    ItemResult(row.seq, row.item_id, first.status, first.transaction_id, first.code)
                )
            elif row.item_id not in seen:  # a repeat in this chunk waits for the first's result
                seen.add(row.item_id)
                fresh.append(row)
        results += [r for r in await self._post(partner_id, fresh, proof) if r is not None]
        async with self.engine.begin() as conn:
            await store.record_results(conn, batch_id, partner_id, results)
        if not results:
            await asyncio.sleep(STALL_S)  # every item is busy elsewhere: let it finish
        return True

    async def _post(
        self, partner_id: str, rows: Sequence[Any], proof: SignatureProof
    ) -> list[ItemResult | None]:
        async def one(row: Any) -> ItemResult | None:
            try:
                item: Item = msgspec.convert(row.payload, type=Item)
                command = item_command(partner_id, item)
                outcome = await self.committer.submit(
                    LedgerRequest(command, item_idempotency(row.item_id), proof)
                )
            except (ServiceUnavailable, RequestInProgress):
                return None  # not decided: stays pending, tried again
            except ExchangeError as exc:
                return ItemResult(row.seq, row.item_id, "rejected", code=exc.code)
            return _from_outcome(row, outcome)

        return list(await asyncio.gather(*(one(row) for row in rows)))


def _from_outcome(row: Any, outcome: Outcome) -> ItemResult | None:
    if outcome.error is not None:
        if isinstance(outcome.error, ServiceUnavailable | RequestInProgress):
            return None
        return ItemResult(row.seq, row.item_id, "rejected", code=outcome.error.code)
    answer = msgspec.json.decode(outcome.body)
    return ItemResult(row.seq, row.item_id, "posted", transaction_id=answer.get("transaction_id"))


def _rows(batch_id: str, items: Sequence[Item]) -> list[dict[str, Any]]:
    return [
        {
            "batch_id": batch_id,
            "seq": seq,
            "item_id": item.item_id,
            "payload": msgspec.to_builtins(item),
            "status": "pending",
        }
        for seq, item in enumerate(items, start=1)
    ]


def _result_view(row: Any) -> dict[str, Any]:
    view: dict[str, Any] = {"item_id": row.item_id, "status": row.status}
    if row.transaction_id is not None:
        view["transaction_id"] = row.transaction_id
    if row.code is not None:
        view["code"] = row.code
    return view
