"""Small helpers the tests share: partners, members, postings, the verify check, a
member's row held by another session, and waiting until sessions wait for a lock."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import Clock
from exchange.db import libpq_url
from exchange.errors import ExchangeError
from exchange.service import Command, Idempotency, LedgerRequest, LedgerService, Outcome
from exchange.verify import verify_ledger
from partners.registry import PartnerSpec, create_partner


async def add_partner(
    engine: AsyncEngine,
    clock: Clock,
    partner_id: str = "grocer",
    *,
    issue_price: str = "0.012",
    redemption_value: str = "0.010",
    currency: str = "EUR",
    earn_rates: dict[str, str] | None = None,
    credit_limit: str | None = None,
) -> str:
    await create_partner(
        engine,
        clock,
        PartnerSpec(
            partner_id=partner_id,
            name=partner_id.title(),
            settlement_currency=currency,
            issue_price=Decimal(issue_price),
            redemption_value=Decimal(redemption_value),
            earn_rates={code: Decimal(rate) for code, rate in (earn_rates or {}).items()},
            credit_limit=Decimal(credit_limit) if credit_limit is not None else None,
        ),
    )
    return partner_id


async def enrol(ledger: LedgerService, partner_id: str) -> str:
    outcome = await ledger.enrol_member(partner_id, None, None)
    member_id: str = msgspec.json.decode(outcome.body)["member_id"]
    return member_id


def fingerprint(command: Command) -> bytes:
    return hashlib.sha256(repr(command).encode()).digest()


async def submit(ledger: LedgerService, command: Command, key: str | None = None) -> Outcome:
    idempotency = Idempotency(key, fingerprint(command)) if key else None
    [outcome] = await ledger.submit([LedgerRequest(command, idempotency)])
    return outcome


async def post(ledger: LedgerService, command: Command, key: str | None = None) -> dict[str, Any]:
    """Run one command; return its decoded response or raise its error."""
    outcome = await submit(ledger, command, key)
    if outcome.error is not None:
        raise outcome.error
    body: dict[str, Any] = msgspec.json.decode(outcome.body)
    return body


async def refused(ledger: LedgerService, command: Command) -> ExchangeError:
    outcome = await submit(ledger, command)
    assert outcome.error is not None, f"expected an error, got {outcome.body!r}"
    return outcome.error


async def assert_ledger_verifies(engine: AsyncEngine) -> dict[str, int]:
    report = await verify_ledger(engine)
    assert report.discrepancies == [], report.discrepancies
    return report.totals


_WAITING_FOR_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)


async def until_a_session_waits_for_a_lock(
    engine: AsyncEngine, what: str = "a session", *, sessions: int = 1
) -> None:
    """Return once `sessions` other sessions of this database wait for a lock (within 5 s)."""
    waiting = 0
    for _ in range(500):
        async with engine.connect() as conn:
            waiting = await conn.scalar(_WAITING_FOR_A_LOCK) or 0
        if waiting >= sessions:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: {waiting} sessions waited for a lock, not {sessions}")


@asynccontextmanager
async def member_row_held(database_url: str, member_id: str) -> AsyncIterator[asyncpg.Transaction]:
    """Another session (an operator's psql left inside BEGIN, a stuck job) holds the member's
    row locked until the yielded transaction is rolled back or the block ends."""
    holder = await asyncpg.connect(libpq_url(database_url))
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM members WHERE member_id = $1 FOR UPDATE", member_id)
        yield held
    finally:
        await holder.close()
