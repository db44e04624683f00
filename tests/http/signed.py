"""Signed raw requests for tests: any method, path and body (CSV too)."""

from __future__ import annotations

import uuid

import httpx

from exchange.clock import FrozenClock
from partners.signing import load_private_key, sign_request
from tests.conftest import PUBLIC_URL
from tests.http.conftest import OnboardedPartner


async def signed(
    client: httpx.AsyncClient,
    partner: OnboardedPartner,
    clock: FrozenClock,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    content_type: str = "application/json",
    idempotency_key: str | None = None,
) -> httpx.Response:
    headers: dict[str, str] = {}
    if body:
        headers["Content-Type"] = content_type
    if method == "POST":
        headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
    target = f"{PUBLIC_URL}{path}"
    headers |= sign_request(
        method=method,
        url=target,
        headers=headers,
        body=body or None,
        key_id=partner.key_id,
        private_key=load_private_key(partner.private_key),
        created=int(clock.now().timestamp()),
    )
    return await client.request(method, target, content=body, headers=headers)
