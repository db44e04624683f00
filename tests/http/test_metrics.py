"""`GET /metrics` in-process: the series of contract §12, parsed with prometheus-client's
own parser, and who may scrape (loopback freely, anyone else with an operator token)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families

from exchange.client_address import TrustedProxies
from exchange.config import Settings
from tests.conftest import PUBLIC_URL
from tests.http.conftest import PartnerFactory


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    changes: dict[str, Any] = getattr(request, "param", {})
    return settings.with_changes(**changes)


@pytest.fixture
async def remote(app: Litestar, client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose socket peer is not loopback (the app is already running)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        yield http


async def test_metrics_count_requests_postings_batches_pool_and_signature_failures(
    client: httpx.AsyncClient, onboard: PartnerFactory
) -> None:
    before = _samples((await client.get("/metrics")).text)
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 100, reference="m-1")
    await grocer.client.burn(member, 40, reference="m-2")
    forged = await client.get(
        "/v1/transactions", headers={"Signature-Input": "x", "Signature": "y"}
    )
    assert forged.status_code == 401
    code = forged.json()["code"]

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("exchange_postings_total", type="earn") == 1
    assert grew("exchange_postings_total", type="burn") == 1
    assert grew("exchange_group_commit_batch_size_count") == 2  # earn, burn
    assert grew("exchange_signature_failures_total", code=code) == 1
    # By route template, never the raw path (which would make a series per partner).
    assert grew("exchange_http_requests_total", method="POST", route="/v1/earn", status="201") == 1
    partner_keys = "/v1/admin/partners/{partner_id}/keys"
    assert grew("exchange_http_requests_total", route=partner_keys, status="201") == 1
    assert grew("exchange_http_request_duration_seconds_count", route="/v1/burn") == 1
    assert _value(after, "exchange_db_pool_size") >= 1
    assert "exchange_settlement_run_duration_seconds_count" in after
    assert "exchange_webhook_backlog" in after  # set by the delivery worker each cycle


async def test_metrics_need_an_operator_token_away_from_loopback(
    remote: httpx.AsyncClient, finance_headers: dict[str, str]
) -> None:
    refused = await remote.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    # Claiming to be local in a header changes nothing: only the socket peer counts.
    spoofed = await remote.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert spoofed.status_code == 401
    allowed = await remote.get("/metrics", headers=finance_headers)
    assert allowed.status_code == 200
    assert "exchange_http_requests_total" in allowed.text


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        (None, 200),  # a local agent
        ("127.0.0.1", 200),  # a local agent, through the proxy
        ("203.0.113.9", 401),  # a remote client, through the proxy
        ("2001:db8::7", 401),
        ("127.0.0.1, 203.0.113.9", 401),  # the client's own claim, left of what the proxy saw
        ("203.0.113.9, 127.0.0.1", 401),  # two local proxies in a row
        ("unknown", 401),  # unreadable: not provably local
    ],
)
async def test_behind_a_local_reverse_proxy_the_client_it_names_is_judged(
    client: httpx.AsyncClient, forwarded: str | None, status: int
) -> None:
    # The in-process client's peer is 127.0.0.1, a trusted proxy by default.
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    assert (await client.get("/metrics", headers=headers)).status_code == status


@pytest.mark.parametrize("settings", [{"trusted_proxies": TrustedProxies()}], indirect=True)
async def test_with_no_trusted_proxy_x_forwarded_for_is_ignored(
    client: httpx.AsyncClient, remote: httpx.AsyncClient
) -> None:
    relayed = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert relayed.status_code == 200  # the loopback peer is the client
    spoofed = await remote.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert spoofed.status_code == 401
