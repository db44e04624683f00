"""A batch's items are decided in passes through the file: an item left undecided by its
chunk (the database away, the item busy in another batch) is decided by a later pass, and
the batch completes only when every item has its result (exchange/batches/service.py)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches.service import BatchService
from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.errors import ServiceUnavailable
from exchange.service import (
    LedgerRequest,
    LedgerService,
    Outcome,
    Record,
    Render,
    SignatureProof,
)
from tests.support import add_partner, assert_ledger_verifies, enrol

_PROOF = SignatureProof("grocer-key", 'sig1=("@method")', ":c2ln:", None, b"base")


class _AwayOnce(GroupCommitter):
    """The database away for the first chunk only: its items stay undecided."""

    def __init__(self, ledger: LedgerService) -> None:
        super().__init__(ledger, batch_max=64, concurrency=2)
        self.chunks: list[list[str]] = []

    async def commit_group(
        self,
        requests: Sequence[LedgerRequest],
        *,
        render: Render | None = None,
        record: Record | None = None,
    ) -> list[Outcome]:
        # Each item's points are its number: the chunk's items, by number.
        self.chunks.append([f"i-{getattr(r.command, 'points', None)}" for r in requests])
        if len(self.chunks) == 1:
            raise ServiceUnavailable("the database is away")
        return await super().commit_group(requests, render=render, record=record)


async def test_an_item_left_undecided_is_posted_by_a_later_pass_and_only_then_completes(
    engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    committer = _AwayOnce(ledger)
    batches = BatchService(engine, clock, committer, chunk=2)
    items = [
        {"item_id": f"i-{n}", "type": "earn", "member_id": member, "reference": "r", "points": n}
        for n in range(1, 6)
    ] + [{"item_id": "i-1", "type": "earn", "member_id": member, "reference": "r", "points": 1}]
    accepted = await batches.accept(
        "grocer", msgspec.json.encode({"items": items}), "application/json", _PROOF, None
    )
    batch_id = msgspec.json.decode(accepted.body)["batch_id"]

    assert await batches.process_next()

    # The first pass: chunks (1, 2) refused by the database, (3, 4), (5, repeat of 1); the
    # second pass from the start: (1, 2) again. The repeat of i-1 in the first pass was
    # posted as the first occurrence of its id in its chunk.
    assert committer.chunks == [["i-1", "i-2"], ["i-3", "i-4"], ["i-5", "i-1"], ["i-2"]]
    status = await batches.status("grocer", batch_id)
    assert (status.status, status.posted, status.rejected) == ("completed", 6, 0)
    results = (await batches.results("grocer", batch_id, 0, 10)).results
    assert [r.item_id for r in results] == ["i-1", "i-2", "i-3", "i-4", "i-5", "i-1"]
    assert results[0].transaction_id == results[5].transaction_id
    balance = await ledger.read_balance(member)
    assert balance.available == 1 + 2 + 3 + 4 + 5
    await assert_ledger_verifies(engine)
