"""`exchange verify` checks transfers: a clean one passes; a transferred lot whose expiry,
issuer or points differ from what was drawn, or a transfer whose two sides differ, is
reported with the transfer's id."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.members.service import MembersService
from exchange.service import Earn, Idempotency, LedgerService
from exchange.verify import verify_ledger
from tests.support import add_partner, assert_ledger_verifies, enrol, post


async def _transferred(ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock) -> str:
    await add_partner(engine, clock, "grocer")
    alice, bob = await enrol(ledger, "grocer"), await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", alice, "a", points=300))
    await post(ledger, Earn("grocer", alice, "b", points=300,
                            expires_at=clock.now() + timedelta(days=9)))  # fmt: skip
    service = MembersService(engine, clock, Settings())
    outcome = await service.transfer(alice, bob, 450, Idempotency("k", b"k"))
    transfer_id: str = msgspec.json.decode(outcome.body)["transfer_id"]
    totals = await assert_ledger_verifies(engine)
    assert (totals["transfers"], totals["outstanding"]) == (1, 600)
    return transfer_id


async def _tamper(engine: AsyncEngine, statement: str) -> set[tuple[str, str]]:
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(text(statement))
    report = await verify_ledger(engine)
    return {(d.check, d.subject) for d in report.discrepancies}


async def test_verify_reports_a_transferred_lot_that_changed_expiry(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    transfer_id = await _transferred(ledger, engine, clock)
    found = await _tamper(
        engine,
        "UPDATE lots SET expires_at = expires_at + interval '1 day' "
        "WHERE source_lot_id IS NOT NULL AND initial = 300",
    )
    assert ("transfer_lots", transfer_id) in found


async def test_verify_reports_a_transfer_whose_sides_differ(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    transfer_id = await _transferred(ledger, engine, clock)
    found = await _tamper(
        engine,
        "UPDATE entries SET amount = amount - 1 WHERE account = 'transfer' AND amount < 0",
    )
    assert ("transfer_pairs", transfer_id) in found
