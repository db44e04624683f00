"""A row held locked by another database session (an operator's psql left inside BEGIN, a
stuck job) is a 503 after EXCHANGE_DB_LOCK_TIMEOUT_S, never a hang: the requests that
need other rows post meanwhile, and the refused one posts exactly once when retried."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import libpq_url
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed
from tests.support import assert_ledger_verifies, member_row_held

LOCK_TIMEOUT_S = 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The tests' settings with a short lock timeout."""
    return dataclasses.replace(settings, db_lock_timeout_s=LOCK_TIMEOUT_S)


async def _earn(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
    key: str,
) -> httpx.Response:
    body = msgspec.json.encode({"member_id": member_id, "points": 10, "reference": key})
    return await signed(client, grocer, clock, "POST", "/v1/earn", body=body, idempotency_key=key)


async def _database_timeouts_fire(database_url: str) -> bool:
    """Whether PostgreSQL's own timeouts fire on this server. Under the moved-clock run
    (.ci/any-date) libfaketime, preloaded into PostgreSQL with an offset, stops them: a
    200 ms statement_timeout then does not interrupt pg_sleep(2) (with a zero offset it
    does). Production servers have no libfaketime."""
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        await conn.execute("SET statement_timeout = '200ms'")
        try:
            await conn.execute("SELECT pg_sleep(2)")
        except asyncpg.QueryCanceledError:
            return True
        return False
    finally:
        await conn.close()


async def test_a_row_held_by_a_stuck_session_is_a_503_not_a_hang(
    client: httpx.AsyncClient,
    onboard: PartnerFactory,
    clock: FrozenClock,
    database_url: str,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not await _database_timeouts_fire(database_url):
        pytest.skip("PostgreSQL's timeouts do not fire under libfaketime with an offset")
    grocer = await onboard("grocer")
    held = (await grocer.client.enrol_member(reference="held"))["member_id"]
    others = [(await grocer.client.enrol_member(reference=f"o{n}"))["member_id"] for n in range(5)]
    async with member_row_held(database_url, held) as stuck:
        started = time.monotonic()
        # Sent together, so the group committer puts them in batches with the held member.
        answers = await asyncio.wait_for(
            asyncio.gather(
                _earn(client, grocer, clock, held, "earn-held"),
                *(_earn(client, grocer, clock, m, f"earn-{m}") for m in others),
            ),
            60,
        )
        waited_s = time.monotonic() - started
        refused, *posted = answers
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "service_unavailable"
        assert refused.headers["Retry-After"]
        assert [answer.status_code for answer in posted] == [201] * len(others), [
            answer.text for answer in posted
        ]
        # Bounded by the lock timeout (a batch waits once whole, then its request alone).
        assert waited_s < 10 * LOCK_TIMEOUT_S
        # The operator is told once, as a warning: busy, not a bug.
        said = [
            (r.levelname, r.getMessage()) for r in caplog.records if r.name == "exchange.problems"
        ]
        assert [level for level, message in said if "service_unavailable" in message] == [
            "WARNING"
        ], said
        assert not [message for level, message in said if level == "ERROR"], said
        await stuck.rollback()

    retried = await _earn(client, grocer, clock, held, "earn-held")
    assert retried.status_code == 201, retried.text
    again = await _earn(client, grocer, clock, held, "earn-held")
    assert again.json()["transaction_id"] == retried.json()["transaction_id"]
    assert (await grocer.client.balance(held))["available"] == 10
    for member_id in others:
        assert (await grocer.client.balance(member_id))["available"] == 10
    await assert_ledger_verifies(engine)
