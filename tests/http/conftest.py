"""HTTP fixtures: operator tokens, onboarded partners with real keys, signing clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.operators import create_operator_token
from partners.client import AsyncPartnerClient
from partners.signing import generate_keypair
from tests.conftest import PUBLIC_URL


@pytest.fixture
async def admin_headers(engine: AsyncEngine) -> dict[str, str]:
    _, token = await create_operator_token(engine, "admin", "test-admin")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def finance_headers(engine: AsyncEngine) -> dict[str, str]:
    _, token = await create_operator_token(engine, "finance", "test-finance")
    return {"Authorization": f"Bearer {token}"}


@dataclass
class OnboardedPartner:
    partner_id: str
    key_id: str
    private_key: str
    public_key: str
    client: AsyncPartnerClient


PartnerFactory = Callable[..., Awaitable[OnboardedPartner]]


def signing_client(
    app: Litestar, clock: FrozenClock, key_id: str, private_key: str
) -> AsyncPartnerClient:
    """A partner client talking to the app in-process, signing with the test clock."""
    return AsyncPartnerClient(
        PUBLIC_URL,
        key_id,
        private_key,
        transport=httpx.ASGITransport(app=app),
        clock=lambda: clock.now().timestamp(),
        max_retries=0,
        backoff_s=0,
    )


@pytest.fixture
async def onboard(
    app: Litestar,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    clock: FrozenClock,
) -> AsyncIterator[PartnerFactory]:
    """Onboard a partner through the operator API and register a fresh key for it."""
    clients: list[AsyncPartnerClient] = []

    async def factory(partner_id: str = "grocer", **terms: Any) -> OnboardedPartner:
        body = {
            "partner_id": partner_id,
            "name": partner_id.title(),
            "settlement_currency": "EUR",
            "issue_price": "0.012",
            "redemption_value": "0.010",
            "earn_rates": {"EUR": "1"},
        } | terms
        created = await client.post("/v1/admin/partners", json=body, headers=admin_headers)
        assert created.status_code == 201, created.text
        private_key, public_key = generate_keypair()
        key = await client.post(
            f"/v1/admin/partners/{partner_id}/keys",
            json={"public_key": public_key},
            headers=admin_headers,
        )
        assert key.status_code == 201, key.text
        partner_client = signing_client(app, clock, key.json()["key_id"], private_key)
        clients.append(partner_client)
        return OnboardedPartner(
            partner_id, key.json()["key_id"], private_key, public_key, partner_client
        )

    yield factory
    for partner_client in clients:
        await partner_client.aclose()
