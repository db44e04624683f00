"""The group committer's queue is bounded: past EXCHANGE_GROUP_COMMIT_QUEUE_MAX waiting
postings a partner gets 503 service_unavailable with Retry-After at once, and nothing of
that request is written; a retry with the same key goes through once the queue drains."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from litestar import Litestar

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.service import LedgerService
from tests.http.conftest import PartnerFactory
from tests.http.test_gateway_api import send
from tests.http.test_gateway_signatures import assert_problem, json_body


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # One batch at a time and room for one waiting posting.
    return settings.with_changes(group_commit_concurrency=1, group_commit_queue_max=1)


async def test_a_full_queue_is_503_with_retry_after_and_a_retry_succeeds(
    app: Litestar,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    onboard: PartnerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member(reference="card-1"))["member_id"]
    committer = app.state.services.committer
    original = LedgerService.submit
    release, started = asyncio.Event(), asyncio.Event()

    async def slow(self: LedgerService, requests: Any) -> Any:
        started.set()
        await release.wait()  # a slow database: the running batch keeps its place
        return await original(self, requests)

    monkeypatch.setattr(LedgerService, "submit", slow)
    running = asyncio.create_task(
        grocer.client.earn(member, 10, reference="o-1", idempotency_key="e-1")
    )
    await started.wait()
    waiting = asyncio.create_task(
        grocer.client.earn(member, 20, reference="o-2", idempotency_key="e-2")
    )
    for _ in range(500):
        if committer.queued == 1:
            break
        await asyncio.sleep(0.01)
    assert committer.queued == 1

    body = json_body({"member_id": member, "points": 40, "reference": "o-3"})
    key = {"Idempotency-Key": "e-3"}
    # Refused at once, not queued behind the slow batch (which would wait for `release`).
    refused = await asyncio.wait_for(
        send(client, grocer, clock, "POST", "/v1/earn", body, headers=key), timeout=10
    )
    problem = assert_problem(refused, 503, "service_unavailable")
    assert problem["detail"].startswith("Too many postings are waiting")
    assert refused.headers["retry-after"] == "1"

    release.set()
    assert (await running).status == 201
    assert (await waiting).status == 201
    retried = await send(client, grocer, clock, "POST", "/v1/earn", body, headers=key)
    assert retried.status_code == 201, retried.text
    assert "idempotency-replayed" not in retried.headers
    balance = await grocer.client.balance(member)
    assert balance["available"] == 70  # 10 + 20 + 40: the refused attempt wrote nothing
