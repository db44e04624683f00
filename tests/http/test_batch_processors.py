"""EXCHANGE_BATCH_PROCESSORS batch files progress at once per server process, and the pool
adds two connections for each processor (its batch's lock, the chunk it posts) on top of
EXCHANGE_DB_POOL_SIZE: processors stuck on a locked row never take a request's connection."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed
from tests.support import assert_ledger_verifies, member_row_held, until_a_session_waits_for_a_lock

PROCESSORS = 2
POOL_TIMEOUT_S = 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One connection of the requests' own: a starved request would be a 503 after
    POOL_TIMEOUT_S; a lock timeout far beyond the test, so the chunks keep waiting."""
    return dataclasses.replace(
        settings,
        db_pool_size=1,
        batch_processors=PROCESSORS,
        db_pool_timeout_s=POOL_TIMEOUT_S,
        db_lock_timeout_s=60,
    )


async def _upload(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    item_id: str,
    member: str,
) -> str:
    item = {"item_id": item_id, "type": "earn", "member_id": member, "reference": item_id}
    body = msgspec.json.encode({"items": [item | {"points": 5}]})
    accepted = await signed(client, grocer, clock, "POST", "/v1/batches", body=body)
    assert accepted.status_code == 202, accepted.text
    batch_id: str = accepted.json()["batch_id"]
    return batch_id


async def _status(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, batch_id: str
) -> str:
    got = await signed(client, grocer, clock, "GET", f"/v1/batches/{batch_id}")
    assert got.status_code == 200, got.text
    status: str = got.json()["status"]
    return status


async def test_batches_progress_together_and_leave_requests_a_connection(
    client: httpx.AsyncClient,
    onboard: PartnerFactory,
    clock: FrozenClock,
    database_url: str,
    engine: AsyncEngine,
) -> None:
    grocer = await onboard("grocer")
    held = (await grocer.client.enrol_member(reference="held"))["member_id"]
    other = (await grocer.client.enrol_member(reference="other"))["member_id"]
    async with member_row_held(database_url, held) as stuck:
        batch_ids = [await _upload(client, grocer, clock, f"i-{n}", held) for n in range(2)]
        # Each processor's chunk reaches the held row.
        await until_a_session_waits_for_a_lock(engine, "the chunks", sessions=PROCESSORS)

        # Every processor holds its batch and posts a chunk: a partner is still answered.
        earned = await asyncio.wait_for(
            grocer.client.earn(other, 7, reference="meanwhile", idempotency_key="m-1"), 10
        )
        assert earned["points"] == 7
        assert (await asyncio.wait_for(grocer.client.balance(other), 10))["available"] == 7
        assert [await _status(client, grocer, clock, b) for b in batch_ids] == ["processing"] * 2
        await stuck.rollback()

    for batch_id in batch_ids:
        for _ in range(400):
            if await _status(client, grocer, clock, batch_id) == "completed":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"batch {batch_id} never completed")
    assert (await grocer.client.balance(held))["available"] == 10  # each item once
    await assert_ledger_verifies(engine)
