"""A statement PostgreSQL cancels (an operator's pg_cancel_backend, or a statement_timeout
set on the exchange's role) is a 503 to retry, never a 500: nothing was written, and the
retry with the same key posts exactly once."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import libpq_url
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed
from tests.support import assert_ledger_verifies, member_row_held


async def _earn(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, member_id: str
) -> httpx.Response:
    body = msgspec.json.encode({"member_id": member_id, "points": 10, "reference": "r-1"})
    return await signed(
        client, grocer, clock, "POST", "/v1/earn", body=body, idempotency_key="earn-1"
    )


async def _backend_waiting_for_a_lock(observer: asyncpg.Connection) -> int:
    """The exchange's backend waiting for a row lock (within 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid = await observer.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> pg_backend_pid() LIMIT 1"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError("no request came to wait for the held row")


async def test_a_statement_cancelled_by_an_operator_is_a_503_and_the_retry_posts_once(
    client: httpx.AsyncClient,
    onboard: PartnerFactory,
    clock: FrozenClock,
    database_url: str,
    engine: AsyncEngine,
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member(reference="held"))["member_id"]
    observer = await asyncpg.connect(libpq_url(database_url))
    # Hold the member's row, so the earn's statement is there to be cancelled.
    try:
        async with member_row_held(database_url, member) as stuck:
            earn = asyncio.create_task(_earn(client, grocer, clock, member))
            pid = await _backend_waiting_for_a_lock(observer)
            assert await observer.fetchval("SELECT pg_cancel_backend($1)", pid)
            answer = await asyncio.wait_for(earn, 30)
            assert answer.status_code == 503, answer.text  # before: 500 internal_error
            assert answer.json()["code"] == "service_unavailable"
            assert "cancelled" in answer.json()["detail"]
            assert answer.headers["Retry-After"]
            await stuck.rollback()
    finally:
        await observer.close()

    assert (await grocer.client.balance(member))["available"] == 0  # nothing was written
    retried = await _earn(client, grocer, clock, member)
    assert retried.status_code == 201, retried.text
    again = await _earn(client, grocer, clock, member)
    assert again.json()["transaction_id"] == retried.json()["transaction_id"]
    assert (await grocer.client.balance(member))["available"] == 10
    await assert_ledger_verifies(engine)
