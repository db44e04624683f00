"""Adjustments against real PostgreSQL: racing approvals post once, the database keeps
four eyes even if the code did not, and a debit races a burn without overdrawing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.errors import InsufficientPoints
from exchange.schemas import AdjustmentCreate
from exchange.service import AdjustmentService, Approver, Burn, Earn, Idempotency, LedgerService
from tests.support import add_partner, assert_ledger_verifies, enrol, post, submit

REQUESTER = Approver("opt_requester", "requester")


async def _pending(service: AdjustmentService, member: str, points: int, key: str) -> str:
    body = AdjustmentCreate(member_id=member, points=points, issuer="grocer", reason="test")
    outcome = await service.request(REQUESTER, body, Idempotency(key, key.encode()))
    adjustment_id: str = msgspec.json.decode(outcome.body)["adjustment_id"]
    return adjustment_id


async def _postings(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count: int = await conn.scalar(
            text("SELECT count(*) FROM postings WHERE type = 'adjustment'")
        )
    return count


async def test_racing_approvals_post_an_adjustment_once(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    service = AdjustmentService(engine, clock, ledger)
    adjustment_id = await _pending(service, member, 70, "race-1")

    first, second = await asyncio.gather(
        service.approve(Approver("opt_a", "a"), adjustment_id),
        service.approve(Approver("opt_b", "b"), adjustment_id),
    )

    assert first == second
    assert first.status == "posted"
    assert await _postings(engine) == 1
    assert (await ledger.read_balance(member)).available == 70
    await assert_ledger_verifies(engine)


async def test_the_database_refuses_an_approval_by_the_requester(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    adjustment_id = await _pending(AdjustmentService(engine, clock, ledger), member, 5, "k")
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE adjustments SET approved_token_id = requested_token_id "
                    "WHERE adjustment_id = :id"
                ),
                {"id": adjustment_id},
            )


async def test_a_debit_racing_a_burn_never_overdraws(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "seed", points=100))
    service = AdjustmentService(engine, clock, ledger)
    adjustment_id = await _pending(service, member, -80, "debit")

    approved, burned = await asyncio.gather(
        service.approve(Approver("opt_a", "a"), adjustment_id),
        submit(ledger, Burn("grocer", member, 80), "burn-80"),
        return_exceptions=True,
    )

    outcomes = [approved, burned.error if not isinstance(burned, BaseException) else burned]
    refused = [o for o in outcomes if isinstance(o, InsufficientPoints)]
    assert len(refused) == 1, outcomes
    assert (await ledger.read_balance(member)).available == 20
    await assert_ledger_verifies(engine)
