"""Partner request signatures over HTTP (contract §2.1): every way a signature can fail.

Requests the client would never produce (tampered, duplicated, under-covered) are built
here with `partners.signing` and sent raw through the app; `created` always comes from
the test clock, which is also the server's clock. Every refusal is checked for what a
partner would notice (status, `code`) and for what it must not do (post anything).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.app import create_app
from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.tables import postings
from partners import store as partner_store
from partners.client import AsyncPartnerClient
from partners.errors import PartnerAPIError
from partners.registry import add_key
from partners.signing import (
    BODY_COMPONENTS,
    POST_COMPONENTS,
    REQUIRED_COMPONENTS,
    IncomingRequest,
    KeyRecord,
    content_digest,
    decode_public_key,
    generate_keypair,
    load_private_key,
    public_key_b64url,
    sign_components,
    sign_request,
    verify_request,
    verify_signature_base,
)
from tests.conftest import PUBLIC_URL, running
from tests.http.conftest import OnboardedPartner, PartnerFactory, signing_client
from tests.support import add_partner

AUTHORITY = "exchange.test"
DOC = Path(__file__).resolve().parents[2] / "docs" / "partners.md"
POST_ALL = (*REQUIRED_COMPONENTS, *BODY_COMPONENTS, *POST_COMPONENTS)


# --- raw signed requests ----------------------------------------------------------------------


def sign_headers(
    partner: OnboardedPartner,
    clock: FrozenClock,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    components: Sequence[str] | None = None,
    created: int | None = None,
    nonce: str | None = None,
    key_id: str | None = None,
    private_key: str | None = None,
) -> dict[str, str]:
    """Every header a partner would send, signed over exactly `components`.

    With a body, Content-Type (JSON unless given) and Content-Digest are added; a POST
    gets a fresh Idempotency-Key unless one is given. `components` defaults to the
    profile's full coverage for the request.
    """
    fields = dict(headers or {})
    if body:
        fields.setdefault("Content-Type", "application/json")
        fields.setdefault("Content-Digest", content_digest(body))
    if method == "POST":
        fields.setdefault("Idempotency-Key", str(uuid.uuid4()))
    if components is None:
        components = list(REQUIRED_COMPONENTS)
        if body:
            components += BODY_COMPONENTS
        if method == "POST":
            components += POST_COMPONENTS
    signature = sign_components(
        method=method,
        authority=AUTHORITY,
        path=path,
        query=query,
        headers=fields,
        components=components,
        key_id=key_id or partner.key_id,
        private_key=load_private_key(private_key or partner.private_key),
        created=int(clock.now().timestamp()) if created is None else created,
        nonce=secrets.token_urlsafe(24) if nonce is None else nonce,
    )
    return fields | signature


def url(path: str, query: str = "") -> httpx.URL:
    """The URL with its path and query exactly as given (percent-encoding untouched)."""
    return httpx.URL(PUBLIC_URL + path + (f"?{query}" if query else ""))


def json_body(value: Any) -> bytes:
    return msgspec.json.encode(value)


async def posting_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count: int = await conn.scalar(select(func.count()).select_from(postings)) or 0
    return count


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert problem["type"] == f"https://errors.coalition.example/{code}"
    # Nothing of the signature machinery leaks into an error.
    assert "@signature-params" not in response.text
    assert "Traceback" not in response.text
    return problem


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


@pytest.fixture
async def member_id(grocer: OnboardedPartner) -> str:
    member = await grocer.client.enrol_member(reference="card-1")
    await grocer.client.earn(member["member_id"], 500, reference="welcome")
    member_id: str = member["member_id"]
    return member_id


async def _earn(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
    **sign: Any,
) -> httpx.Response:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body, **sign)
    return await client.post(url("/v1/earn"), content=body, headers=headers)


# --- the happy path, raw ------------------------------------------------------------------------


async def test_a_hand_signed_request_is_accepted(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    response = await _earn(client, grocer, clock, member_id)
    assert response.status_code == 201, response.text
    assert response.json()["balance_after"] == {"available": 510, "held": 0, "pending": 0}


# --- signature_missing / signature_invalid ------------------------------------------------------


async def test_an_unsigned_request_is_signature_missing(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    assert_problem(await client.get("/v1/transactions"), 401, "signature_missing")
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
    only_input = {"Signature-Input": headers["Signature-Input"]}
    assert_problem(
        await client.get("/v1/transactions", headers=only_input), 401, "signature_missing"
    )
    only_signature = {"Signature": headers["Signature"]}
    assert_problem(
        await client.get("/v1/transactions", headers=only_signature), 401, "signature_missing"
    )


async def test_a_signature_by_another_key_is_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    stranger_private, _ = generate_keypair()
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", private_key=stranger_private)
    assert_problem(
        await client.get(url("/v1/transactions"), headers=headers), 401, "signature_invalid"
    )


async def test_a_body_changed_after_signing_is_digest_mismatch(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    before = await posting_count(engine)
    signed_body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=signed_body)
    tampered = signed_body.replace(b"10", b"99")
    response = await client.post(url("/v1/earn"), content=tampered, headers=headers)
    assert_problem(response, 401, "digest_mismatch")
    assert await posting_count(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 500


async def test_a_body_with_a_recomputed_digest_is_signature_invalid(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """An attacker who fixes the digest still cannot fix the signature over it."""
    before = await posting_count(engine)
    signed_body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=signed_body)
    tampered = signed_body.replace(b"10", b"99")
    headers["Content-Digest"] = content_digest(tampered)
    response = await client.post(url("/v1/earn"), content=tampered, headers=headers)
    assert_problem(response, 401, "signature_invalid")
    assert await posting_count(engine) == before


async def test_a_digest_that_is_not_sha256_or_sha512_is_digest_mismatch(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body)
    headers["Content-Digest"] = "md5=:1B2M2Y8AsgTpgAmY7PhCfg==:"
    response = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert_problem(response, 401, "digest_mismatch")


async def test_a_sha512_digest_is_accepted(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    digest = base64.b64encode(hashlib.sha512(body).digest()).decode()
    headers = sign_headers(
        grocer,
        clock,
        "POST",
        "/v1/earn",
        body=body,
        headers={"Content-Digest": f"sha-512=:{digest}:"},
    )
    response = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert response.status_code == 201, response.text


async def test_a_tampered_path_is_signature_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    other = await grocer.client.enrol_member(reference="card-2")
    headers = sign_headers(grocer, clock, "GET", f"/v1/members/{member_id}/balance")
    response = await client.get(url(f"/v1/members/{other['member_id']}/balance"), headers=headers)
    assert_problem(response, 401, "signature_invalid")


async def test_a_read_with_a_body_its_signature_does_not_cover_is_refused(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    """A GET's body is read whenever HTTP's framing says there is one (a length, or
    chunks), and the signature must cover its digest like any other body's."""
    path = f"/v1/members/{member_id}/balance"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"points":'
        yield b"1}"

    for content in (b'{"points":1}', chunks()):
        headers = sign_headers(grocer, clock, "GET", path)
        response = await client.request("GET", url(path), content=content, headers=headers)
        assert_problem(response, 401, "signature_insufficient")
    # Without a body, the same signature reads the balance.
    headers = sign_headers(grocer, clock, "GET", path)
    response = await client.get(url(path), headers=headers)
    assert response.status_code == 200, response.text


async def test_a_tampered_query_is_signature_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", query="limit=5")
    response = await client.get(url("/v1/transactions", "limit=50"), headers=headers)
    assert_problem(response, 401, "signature_invalid")
    # Added where none was signed, and dropped where one was: both refused.
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
    response = await client.get(url("/v1/transactions", "limit=50"), headers=headers)
    assert_problem(response, 401, "signature_invalid")
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", query="limit=5")
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(response, 401, "signature_invalid")


async def test_a_get_signature_reused_for_a_post_is_refused(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/members")
    body = b"{}"
    headers |= {"Content-Type": "application/json", "Idempotency-Key": "k-1"}
    headers["Content-Digest"] = content_digest(body)
    response = await client.post(url("/v1/members"), content=body, headers=headers)
    # The signature covers neither the body headers nor the key it would need for a POST.
    assert_problem(response, 401, "signature_insufficient")


async def test_a_signature_for_another_authority_is_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    """@authority is the exchange's configured host, never the request's Host header."""
    fields: dict[str, str] = {}
    signature = sign_components(
        method="GET",
        authority="evil.example",
        path="/v1/transactions",
        query="",
        headers=fields,
        components=REQUIRED_COMPONENTS,
        key_id=grocer.key_id,
        private_key=load_private_key(grocer.private_key),
        created=int(clock.now().timestamp()),
        nonce=secrets.token_urlsafe(24),
    )
    response = await client.get(
        url("/v1/transactions"), headers=signature | {"Host": "evil.example"}
    )
    assert_problem(response, 401, "signature_invalid")


async def test_a_non_default_port_is_part_of_the_authority(
    settings: Settings, clock: FrozenClock, engine: AsyncEngine
) -> None:
    app = create_app(settings.with_changes(public_url="https://Exchange.Test:8443/"), clock=clock)
    await add_partner(engine, clock, "grocer")
    private_key, public_key = generate_keypair()
    key = await add_key(engine, clock, "grocer", public_key)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        with_port = AsyncPartnerClient(
            "https://exchange.test:8443",
            key.key_id,
            private_key,
            transport=transport,
            clock=lambda: clock.now().timestamp(),
            max_retries=0,
        )
        without_port = AsyncPartnerClient(
            "https://exchange.test",
            key.key_id,
            private_key,
            transport=transport,
            clock=lambda: clock.now().timestamp(),
            max_retries=0,
        )
        async with with_port, without_port:
            assert (await with_port.list_transactions()).status == 200
            with pytest.raises(PartnerAPIError) as caught:
                await without_port.list_transactions()
    assert (caught.value.status, caught.value.code) == (401, "signature_invalid")


def test_an_ipv6_public_url_gives_the_authority_clients_sign() -> None:
    for public_url in ("http://[::1]:8000", "https://[2001:db8::1]"):
        signed_by_clients = httpx.URL(public_url).netloc.decode()
        assert Settings(public_url=public_url).authority == signed_by_clients


@pytest.mark.parametrize("header", ["Content-Type", "Content-Digest"])
async def test_a_covered_header_sent_twice_is_signature_invalid(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    header: str,
) -> None:
    before = await posting_count(engine)
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body)
    lines = [*headers.items(), (header, headers[header])]
    response = await client.post(url("/v1/earn"), content=body, headers=lines)
    assert_problem(response, 401, "signature_invalid")
    assert await posting_count(engine) == before


async def test_two_signatures_or_two_signature_headers_are_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
    lines = [*headers.items(), ("Signature", headers["Signature"])]
    response = await client.get(url("/v1/transactions"), headers=lines)
    assert_problem(response, 401, "signature_invalid")
    second = headers["Signature"].replace("sig1=", "sig2=")
    doubled = headers | {"Signature": f"{headers['Signature']}, {second}"}
    response = await client.get(url("/v1/transactions"), headers=doubled)
    assert_problem(response, 401, "signature_invalid")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('tag="coalition-v1"', 'tag="other-v1"'),
        (';tag="coalition-v1"', ""),
        (';tag="coalition-v1"', ';tag="coalition-v1";alg="hmac-sha256"'),
        (';tag="coalition-v1"', ';tag="coalition-v1";extra="1"'),
    ],
    ids=["wrong-tag", "no-tag", "alg-not-ed25519", "unknown-parameter"],
)
async def test_signature_parameters_outside_the_profile_are_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, old: str, new: str
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
    assert old in headers["Signature-Input"]
    headers["Signature-Input"] = headers["Signature-Input"].replace(old, new)
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(response, 401, "signature_invalid")


@pytest.mark.parametrize("nonce", ["n" * 15, "n" * 129])
async def test_a_nonce_of_the_wrong_length_is_invalid(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, nonce: str
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", nonce=nonce)
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(response, 401, "signature_invalid")


@pytest.mark.parametrize("nonce", ["n" * 16, "n" * 128])
async def test_a_nonce_at_the_length_limits_is_accepted(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, nonce: str
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", nonce=nonce)
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert response.status_code == 200, response.text


# --- signature_insufficient ---------------------------------------------------------------------


@pytest.mark.parametrize("dropped", POST_ALL)
async def test_a_post_signature_missing_any_required_component_is_insufficient(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    dropped: str,
) -> None:
    before = await posting_count(engine)
    components = [name for name in POST_ALL if name != dropped]
    response = await _earn(client, grocer, clock, member_id, components=components)
    problem = assert_problem(response, 401, "signature_insufficient")
    assert f'"{dropped}"' in problem["detail"]
    assert await posting_count(engine) == before


@pytest.mark.parametrize("dropped", REQUIRED_COMPONENTS)
async def test_a_get_signature_missing_any_required_component_is_insufficient(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, dropped: str
) -> None:
    components = [name for name in REQUIRED_COMPONENTS if name != dropped]
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", components=components)
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(response, 401, "signature_insufficient")


async def test_a_body_without_a_content_digest_is_insufficient(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(
        grocer,
        clock,
        "POST",
        "/v1/earn",
        body=body,
        components=[*REQUIRED_COMPONENTS, "content-type", "idempotency-key"],
    )
    del headers["Content-Digest"]
    response = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert_problem(response, 401, "signature_insufficient")


# --- the time window ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_s", "accepted"),
    [(300, True), (301, False), (-30, True), (-31, False)],
    ids=["300s-old", "301s-old", "30s-ahead", "31s-ahead"],
)
async def test_created_must_be_at_most_300s_old_and_30s_ahead(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    age_s: int,
    accepted: bool,
) -> None:
    created = int(clock.now().timestamp())
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body, created=created)
    clock.advance(timedelta(seconds=age_s))  # the server's clock moves, the signature does not
    before = await posting_count(engine)
    response = await client.post(url("/v1/earn"), content=body, headers=headers)
    if accepted:
        assert response.status_code == 201, response.text
        assert await posting_count(engine) == before + 1
    else:
        problem = assert_problem(response, 401, "signature_expired")
        assert str(abs(age_s)) in problem["detail"]
        assert await posting_count(engine) == before


async def test_a_passed_expires_parameter_is_signature_expired(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
    now = int(clock.now().timestamp())
    headers["Signature-Input"] += f";expires={now - 1}"
    response = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(response, 401, "signature_expired")


# --- keys ---------------------------------------------------------------------------------------


async def test_an_unknown_key_is_key_unknown(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", key_id="key_nobody")
    assert_problem(await client.get(url("/v1/transactions"), headers=headers), 401, "key_unknown")


async def test_a_revoked_key_is_refused_and_the_other_active_key_keeps_working(
    client: httpx.AsyncClient,
    app: Any,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    engine: AsyncEngine,
) -> None:
    """Rotation: register the new key, switch to it, revoke the old one."""
    new_private, new_public = generate_keypair()
    added = await client.post(
        f"/v1/admin/partners/{grocer.partner_id}/keys",
        json={"public_key": new_public},
        headers=admin_headers,
    )
    assert added.status_code == 201
    new_key_id = added.json()["key_id"]
    # Both keys are active at once during the switch.
    assert (await _earn(client, grocer, clock, member_id)).status_code == 201
    response = await _earn(
        client, grocer, clock, member_id, key_id=new_key_id, private_key=new_private
    )
    assert response.status_code == 201, response.text

    revoked = await client.delete(
        f"/v1/admin/partners/{grocer.partner_id}/keys/{grocer.key_id}", headers=admin_headers
    )
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    before = await posting_count(engine)
    assert_problem(await _earn(client, grocer, clock, member_id), 401, "key_revoked")
    assert await posting_count(engine) == before

    async with signing_client(app, clock, new_key_id, new_private) as rotated:
        earned = await rotated.earn(member_id, 5, reference="after-rotation")
    assert earned["balance_after"]["available"] == 525


async def test_a_suspended_partner_is_403_until_reactivated(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    engine: AsyncEngine,
) -> None:
    path = f"/v1/admin/partners/{grocer.partner_id}"
    suspended = await client.patch(path, json={"status": "suspended"}, headers=admin_headers)
    assert suspended.json()["status"] == "suspended"
    before = await posting_count(engine)
    assert_problem(await _earn(client, grocer, clock, member_id), 403, "partner_suspended")
    headers = sign_headers(grocer, clock, "GET", f"/v1/members/{member_id}/balance")
    response = await client.get(url(f"/v1/members/{member_id}/balance"), headers=headers)
    assert_problem(response, 403, "partner_suspended")
    assert await posting_count(engine) == before

    reactivated = await client.patch(path, json={"status": "active"}, headers=admin_headers)
    assert reactivated.json()["status"] == "active"
    response = await _earn(client, grocer, clock, member_id)
    assert response.status_code == 201, response.text
    assert response.json()["balance_after"]["available"] == 510


# --- replay -------------------------------------------------------------------------------------


async def test_a_captured_request_replayed_verbatim_is_nonce_replayed(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body)
    first = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert first.status_code == 201
    before = await posting_count(engine)
    clock.advance(timedelta(seconds=60))  # still inside the window
    again = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert_problem(again, 401, "nonce_replayed")
    assert "Idempotency-Replayed" not in again.headers
    assert await posting_count(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 510


async def test_an_honest_retry_signs_again_and_gets_the_original_answer(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "points": 10, "reference": "order-1"})
    key = {"Idempotency-Key": "order-1-earn"}
    first = await client.post(
        url("/v1/earn"),
        content=body,
        headers=sign_headers(grocer, clock, "POST", "/v1/earn", body=body, headers=key),
    )
    clock.advance(timedelta(seconds=5))
    retry = await client.post(
        url("/v1/earn"),
        content=body,
        headers=sign_headers(grocer, clock, "POST", "/v1/earn", body=body, headers=key),
    )
    assert retry.status_code == 201
    assert retry.headers["idempotency-replayed"] == "true"
    assert retry.content == first.content


async def test_a_nonce_is_remembered_as_long_as_its_signature_is_valid_even_after_a_purge(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, engine: AsyncEngine
) -> None:
    """A request signed 30 s ahead stays valid until created + 300 s, i.e. 330 s after it
    arrived; purging nonces older than the window must not make it replayable."""
    created = int(clock.now().timestamp()) + 30
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", created=created)
    assert (await client.get(url("/v1/transactions"), headers=headers)).status_code == 200
    clock.advance(timedelta(seconds=301))
    async with engine.begin() as conn:
        await partner_store.purge_nonces(conn, clock.now() - timedelta(seconds=300))
    replay = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(replay, 401, "nonce_replayed")
    clock.advance(timedelta(seconds=30))  # now 331 s after arrival: expired, and purgeable
    async with engine.begin() as conn:
        assert await partner_store.purge_nonces(conn, clock.now() - timedelta(seconds=300)) >= 1
    expired = await client.get(url("/v1/transactions"), headers=headers)
    assert_problem(expired, 401, "signature_expired")


async def test_the_same_nonce_under_another_key_is_not_a_replay(
    client: httpx.AsyncClient, onboard: PartnerFactory, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    cinema = await onboard("cinema")
    nonce = "shared-nonce-0123456789"
    for partner in (grocer, cinema):
        headers = sign_headers(partner, clock, "GET", "/v1/transactions", nonce=nonce)
        assert (await client.get(url("/v1/transactions"), headers=headers)).status_code == 200


# --- percent-encoded paths ----------------------------------------------------------------------


async def test_a_percent_encoded_member_id_signed_as_sent_is_accepted(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    assert member_id.startswith("mem_")
    encoded = "/v1/members/mem%5F" + member_id.removeprefix("mem_") + "/balance"
    headers = sign_headers(grocer, clock, "GET", encoded)
    response = await client.get(url(encoded), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["member_id"] == member_id
    assert response.json()["available"] == 500

    # The path is compared as sent: a signature over the decoded spelling does not match.
    decoded = f"/v1/members/{member_id}/balance"
    headers = sign_headers(grocer, clock, "GET", decoded)
    assert_problem(await client.get(url(encoded), headers=headers), 401, "signature_invalid")

    # The partner client signs the raw path it sends, so it works too.
    via_client = await grocer.client.request("GET", encoded)
    assert via_client.json()["available"] == 500


async def test_sign_request_signs_the_wire_spelling_of_path_and_query(
    grocer: OnboardedPartner, clock: FrozenClock, member_id: str, client: httpx.AsyncClient
) -> None:
    encoded = "/v1/members/mem%5F" + member_id.removeprefix("mem_") + "/balance"
    target = url(encoded, "x=a%20b")
    headers = sign_request(
        method="GET",
        url=target,
        headers={},
        body=None,
        key_id=grocer.key_id,
        private_key=load_private_key(grocer.private_key),
        created=int(clock.now().timestamp()),
    )
    response = await client.get(target, headers=headers)
    assert response.status_code == 200, response.text


# --- the worked example in docs/partners.md -----------------------------------------------------


def _doc_block(name: str) -> str:
    """The fenced block right after `<!-- example:NAME -->` in docs/partners.md."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- example:{re.escape(name)} -->\s*```[a-z]*\n(.*?)\n```", text, flags=re.DOTALL
    )
    assert match, f"docs/partners.md has no block marked example:{name}"
    return match.group(1)


def _doc_value(name: str) -> str:
    """A one-line `Name: value` block, returning the value."""
    line = _doc_block(name)
    _, _, value = line.partition(": ")
    return value


def _doc_fields(name: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in _doc_block(name).splitlines():
        key, _, value = line.partition(": ")
        fields[key.strip()] = value.strip()
    return fields


def test_the_guides_test_key_pair_is_consistent() -> None:
    keys = _doc_fields("keys")
    private_key = load_private_key(keys["private key (base64url)"])
    assert private_key.private_bytes_raw().hex() == keys["private key (hex)"]
    assert public_key_b64url(private_key) == keys["public key (base64url)"]
    pem = serialization.load_pem_private_key(_doc_block("pem").encode(), password=None)
    assert isinstance(pem, Ed25519PrivateKey)
    assert pem.private_bytes_raw() == private_key.private_bytes_raw()


@pytest.mark.parametrize("example", ["post", "get"])
async def test_the_worked_example_in_the_partner_guide_is_what_our_code_produces(
    example: str,
) -> None:
    keys = _doc_fields("keys")
    private_key = load_private_key(keys["private key (base64url)"])
    request = _doc_fields(f"{example}:request")
    body = _doc_block(f"{example}:body").encode() if request["method"] == "POST" else b""
    target = httpx.URL(request["url"])
    headers: dict[str, str] = {
        name: request[name] for name in ("Content-Type", "Idempotency-Key") if name in request
    }
    signed = sign_request(
        method=request["method"],
        url=target,
        headers=headers,
        body=body,
        key_id=request["keyid"],
        private_key=private_key,
        created=int(request["created"]),
        nonce=request["nonce"],
    )
    if body:
        assert signed["Content-Digest"] == _doc_value(f"{example}:content-digest")
    else:
        assert "Content-Digest" not in signed
    assert signed["Signature-Input"] == _doc_value(f"{example}:signature-input")
    assert signed["Signature"] == _doc_value(f"{example}:signature")

    # The exchange's verifier accepts it, with exactly the documented signature base, and
    # the documented signature is Ed25519 over exactly those bytes.
    raw_path, _, raw_query = target.raw_path.decode().partition("?")
    lines = [(name.lower(), value) for name, value in (headers | signed).items()]
    verified = await verify_request(
        IncomingRequest(request["method"], raw_path, raw_query, lines, body),
        authority=target.netloc.decode(),
        now=int(request["created"]),
        resolve_key=_example_key(request["keyid"], keys["public key (base64url)"]),
        record_nonce=_accept_nonce,
    )
    base = _doc_block(f"{example}:signature-base").encode()
    assert verified.signature_base == base
    signature = base64.b64decode(_doc_value(f"{example}:signature").split(":")[1])
    assert verify_signature_base(base, signature, decode_public_key(keys["public key (base64url)"]))


def _example_key(key_id: str, public_key: str) -> Any:
    async def resolve(wanted: str) -> KeyRecord | None:
        if wanted != key_id:
            return None
        return KeyRecord(key_id, "example", decode_public_key(public_key), True, True)

    return resolve


async def _accept_nonce(key_id: str, nonce: str, created: int) -> bool:
    return True
