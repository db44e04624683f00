"""The partner client against a fake exchange that verifies every request it receives.

The fake runs the real `verify_request`, so the client's signing and the exchange's
verification are tested against each other; it also records what it saw so retries
can be checked (same Idempotency-Key and body, new nonce).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from partners import client as client_module
from partners.client import AsyncPartnerClient, PartnerClient, PartnerResult
from partners.errors import PartnerAPIError
from partners.signing import (
    IncomingRequest,
    KeyRecord,
    VerifiedSignature,
    b64url_decode,
    generate_keypair,
    load_private_key,
    verify_request,
)

BASE_URL = "https://exchange.test"
KEY_ID = "key_1"
PRIVATE_B64, PUBLIC_B64 = generate_keypair()
Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never suspends (the fake's stores are in memory)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("the fake exchange's coroutine suspended")


def problem(status: int, code: str, detail: str = "details", **headers: str) -> httpx.Response:
    body = {
        "type": f"https://errors.coalition.example/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return httpx.Response(
        status,
        json=body,
        headers={"content-type": "application/problem+json", **headers},
    )


class FakeExchange:
    """An httpx MockTransport handler: verifies the signature, then plays scripted replies."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []
        self.verified: list[VerifiedSignature] = []
        self.nonces: set[tuple[str, str]] = set()

    async def _resolve(self, key_id: str) -> KeyRecord | None:
        public = b64url_decode(PUBLIC_B64)
        return KeyRecord(KEY_ID, "partner_a", public, True, True) if key_id == KEY_ID else None

    async def _record(self, key_id: str, nonce: str, created: int) -> bool:
        if (key_id, nonce) in self.nonces:
            return False
        self.nonces.add((key_id, nonce))
        return True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        incoming = IncomingRequest(
            method=request.method,
            path=path,
            query=query,
            headers=[(k.decode().lower(), v.decode("latin-1")) for k, v in request.headers.raw],
            body=request.content,
        )
        verification = verify_request(
            incoming,
            authority="exchange.test",
            now=int(time.time()),
            resolve_key=self._resolve,
            record_nonce=self._record,
        )
        try:
            self.verified.append(run_sync(verification))
        except Exception as exc:  # the fake answers like the exchange would
            return problem(401, getattr(exc, "code", "unauthorized"), str(exc))
        reply = self.replies.pop(0) if self.replies else self.echo
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, httpx.Response) else reply(request)

    @staticmethod
    def echo(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        status = 201 if request.method == "POST" else 200
        return httpx.Response(status, json={"echo": body, "path": request.url.path})

    def header(self, index: int, name: str) -> str | None:
        value: str | None = self.requests[index].headers.get(name)
        return value


def sync_client(fake: FakeExchange, **options: Any) -> PartnerClient:
    options.setdefault("backoff_s", 0.0)
    return PartnerClient(
        BASE_URL, KEY_ID, PRIVATE_B64, transport=httpx.MockTransport(fake), **options
    )


def async_client(fake: FakeExchange, **options: Any) -> AsyncPartnerClient:
    options.setdefault("backoff_s", 0.0)
    return AsyncPartnerClient(
        BASE_URL, KEY_ID, PRIVATE_B64, transport=httpx.MockTransport(fake), **options
    )


# --- every method, signed and verified ------------------------------------------------------


def exercise(api: PartnerClient) -> list[PartnerResult]:
    at = datetime(2027, 1, 31, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    return [
        api.enrol_member(reference="cust-42"),
        api.balance("mem/01"),
        api.create_session("mem/01", ttl_seconds=600),
        api.earn("mem/01", 120, reference="order-991"),
        api.earn(
            "mem/01",
            purchase=(Decimal("120.00"), "EUR"),
            reference="order-992",
            available_at=at,
            expires_at="2028-01-01T00:00:00Z",
        ),
        api.burn("mem/01", 50, reference="order-993"),
        api.create_hold("mem/01", 30, reference="till-1", expires_in=900),
        api.capture_hold("hold_1", points=20),
        api.void_hold("hold_2"),
        api.reverse("txn_1", points=10, reference="return-1"),
        api.get_transaction("txn_1"),
        api.list_transactions(member_id="mem/01", type="earn", limit=10),
        api.statement("run 7"),
    ]


EXPECTED = [
    ("POST", "/v1/members", {"reference": "cust-42"}),
    ("GET", "/v1/members/mem%2F01/balance", None),
    ("POST", "/v1/members/mem%2F01/sessions", {"ttl_seconds": 600}),
    ("POST", "/v1/earn", {"member_id": "mem/01", "points": 120, "reference": "order-991"}),
    (
        "POST",
        "/v1/earn",
        {
            "member_id": "mem/01",
            "reference": "order-992",
            "purchase": {"amount": "120.00", "currency": "EUR"},
            "available_at": "2027-01-31T00:00:00Z",
            "expires_at": "2028-01-01T00:00:00Z",
        },
    ),
    ("POST", "/v1/burn", {"member_id": "mem/01", "points": 50, "reference": "order-993"}),
    (
        "POST",
        "/v1/holds",
        {"member_id": "mem/01", "points": 30, "reference": "till-1", "expires_in": 900},
    ),
    ("POST", "/v1/holds/hold_1/capture", {"points": 20}),
    ("POST", "/v1/holds/hold_2/void", {}),
    ("POST", "/v1/transactions/txn_1/reversals", {"points": 10, "reference": "return-1"}),
    ("GET", "/v1/transactions/txn_1", None),
    ("GET", "/v1/transactions?member_id=mem%2F01&type=earn&limit=10", None),
    ("GET", "/v1/settlements/run%207/statement", None),
]


def test_every_method_sends_a_verified_request_of_the_contract_shape() -> None:
    fake = FakeExchange()
    with sync_client(fake) as api:
        results = exercise(api)
    assert len(fake.verified) == len(EXPECTED)
    for request, (method, target, body) in zip(fake.requests, EXPECTED, strict=True):
        assert request.method == method
        assert request.url.raw_path.decode() == target
        if body is None:
            assert request.content == b""
            assert "idempotency-key" not in request.headers
        else:
            assert json.loads(request.content) == body
            assert request.headers["content-type"] == "application/json"
            assert request.headers["idempotency-key"]
    assert results[0].status == 201
    assert results[0]["echo"] == {"reference": "cust-42"}
    assert results[1].idempotency_key is None
    assert results[3].idempotency_key == fake.header(3, "idempotency-key")


def test_posts_are_fully_covered_by_the_signature() -> None:
    fake = FakeExchange()
    with sync_client(fake) as api:
        api.burn("mem_01", 5)
    signature_input = fake.verified[0].signature_input
    for component in ("@method", "@authority", "@path", "@query", "content-type"):
        assert f'"{component}"' in signature_input
    assert '"content-digest" "idempotency-key"' in signature_input
    assert 'tag="coalition-v1"' in signature_input


def test_member_id_is_percent_encoded_and_verified_as_sent() -> None:
    fake = FakeExchange()
    with sync_client(fake) as api:
        api.balance("a/b?c%d")
    assert fake.requests[0].url.raw_path == b"/v1/members/a%2Fb%3Fc%25d/balance"
    assert b'"@path": /v1/members/a%2Fb%3Fc%25d/balance' in fake.verified[0].signature_base


def test_caller_idempotency_key_is_sent() -> None:
    fake = FakeExchange()
    with sync_client(fake) as api:
        result = api.burn("mem_01", 5, idempotency_key="my-key-1")
    assert fake.header(0, "idempotency-key") == "my-key-1"
    assert result.idempotency_key == "my-key-1"


def test_replayed_answers_are_observable() -> None:
    replay = httpx.Response(
        201, json={"transaction_id": "t1"}, headers={"Idempotency-Replayed": "true"}
    )
    fake = FakeExchange(replay, httpx.Response(201, json={"transaction_id": "t2"}))
    with sync_client(fake) as api:
        first, second = api.burn("mem_01", 5), api.burn("mem_01", 5)
    assert (first.replayed, second.replayed) == (True, False)
    assert dict(first) == {"transaction_id": "t1"}


# --- retries --------------------------------------------------------------------------------


def assert_honest_retry(fake: FakeExchange, attempts: int) -> None:
    """Same Idempotency-Key and body on every attempt, each signed with a new nonce."""
    assert len(fake.verified) == attempts
    assert len({request.headers["idempotency-key"] for request in fake.requests}) == 1
    assert len({request.content for request in fake.requests}) == 1
    assert len({verified.nonce for verified in fake.verified}) == attempts


def test_retry_after_503_keeps_the_idempotency_key_and_re_signs() -> None:
    fake = FakeExchange(problem(503, "service_unavailable"))
    with sync_client(fake) as api:
        result = api.earn("mem_01", 10, reference="o-1")
    assert result.status == 201
    assert_honest_retry(fake, 2)


def test_retry_after_a_transport_error() -> None:
    fake = FakeExchange(httpx.ConnectError("connection reset"), httpx.ReadTimeout("slow"))
    with sync_client(fake) as api:
        assert api.burn("mem_01", 5).status == 201
    assert_honest_retry(fake, 3)


def test_request_in_progress_and_rate_limit_are_retried() -> None:
    fake = FakeExchange(
        problem(409, "request_in_progress"), problem(429, "rate_limited", **{"Retry-After": "1"})
    )
    with sync_client(fake, retry_after_s_max=0.0) as api:
        assert api.burn("mem_01", 5).status == 201
    assert_honest_retry(fake, 3)


@pytest.mark.parametrize(
    ("status", "code"),
    [(422, "insufficient_points"), (409, "hold_not_open"), (404, "member_not_found")],
)
def test_other_client_errors_are_not_retried(status: int, code: str) -> None:
    fake = FakeExchange(problem(status, code, "only 3 points available"))
    with sync_client(fake) as api, pytest.raises(PartnerAPIError) as raised:
        api.burn("mem_01", 5)
    assert len(fake.requests) == 1
    error = raised.value
    assert (error.status, error.code, error.detail) == (status, code, "only 3 points available")
    assert error.problem["type"] == f"https://errors.coalition.example/{code}"


def test_retries_are_bounded() -> None:
    fake = FakeExchange(*[problem(503, "service_unavailable")] * 5)
    with sync_client(fake, max_retries=2) as api, pytest.raises(PartnerAPIError) as raised:
        api.burn("mem_01", 5)
    assert (raised.value.status, raised.value.code) == (503, "service_unavailable")
    assert_honest_retry(fake, 3)


def test_transport_errors_surface_after_the_last_retry() -> None:
    fake = FakeExchange(*[httpx.ConnectError("down")] * 3)
    with sync_client(fake, max_retries=1) as api, pytest.raises(httpx.ConnectError):
        api.balance("mem_01")
    assert len(fake.requests) == 2


def test_non_problem_error_bodies_still_raise() -> None:
    fake = FakeExchange(httpx.Response(400, text="nope"))
    with sync_client(fake) as api, pytest.raises(PartnerAPIError) as raised:
        api.balance("mem_01")
    assert (raised.value.code, raised.value.problem) == ("http_400", {})


def test_retry_delays() -> None:
    delay = client_module._retry_delay_s
    assert delay(1, retry_after_s=120.0, backoff_s=0.5, retry_after_s_max=30.0) == 30.0
    assert delay(1, retry_after_s=2.0, backoff_s=0.5, retry_after_s_max=30.0) == 2.0
    for attempt in range(1, 10):
        wait = delay(attempt, retry_after_s=None, backoff_s=0.5, retry_after_s_max=30.0)
        assert 0.0 <= wait <= min(8.0, 0.5 * 2 ** (attempt - 1))
    parse = client_module._retry_after_s
    assert parse("7") == 7.0
    assert parse(None) is None
    assert parse("soon") is None
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# --- encoding -------------------------------------------------------------------------------


def test_money_is_never_a_float() -> None:
    with sync_client(FakeExchange()) as api:
        with pytest.raises(TypeError, match="never a float"):
            api.earn("mem_01", purchase=(12.5, "EUR"), reference="o-1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="whole numbers"):
            api.burn("mem_01", 1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="points or a purchase"):
            api.earn("mem_01", reference="o-1")
        with pytest.raises(ValueError, match="naive"):
            api.earn("mem_01", 1, reference="o-1", available_at=datetime(2027, 1, 1))


def test_purchase_as_a_mapping() -> None:
    fake = FakeExchange()
    with sync_client(fake) as api:
        api.earn("mem_01", purchase={"amount": "9.5", "currency": "EUR"}, reference="o-1")
    assert json.loads(fake.requests[0].content)["purchase"] == {"amount": "9.5", "currency": "EUR"}


def test_generic_request_and_private_key_object() -> None:
    fake = FakeExchange()
    api = PartnerClient(
        BASE_URL, KEY_ID, load_private_key(PRIVATE_B64), transport=httpx.MockTransport(fake)
    )
    response = api.request("POST", "/v1/burn", json={"member_id": "m", "points": 1})
    api.close()
    assert response.status_code == 201
    assert fake.header(0, "idempotency-key")


def test_non_object_success_body_is_an_error() -> None:
    fake = FakeExchange(httpx.Response(200, json=[1, 2]))
    with sync_client(fake) as api, pytest.raises(PartnerAPIError, match="invalid_response"):
        api.balance("m")


# --- the async client -----------------------------------------------------------------------


def request_shape(request: httpx.Request) -> tuple[Any, ...]:
    """Everything about a request except what must differ per attempt (nonce, created, key)."""
    signature_input = re.sub(
        r";(created=\d+|nonce=\"[^\"]*\")", "", request.headers["signature-input"]
    )
    headers = sorted(
        (name, "" if name in {"idempotency-key", "signature", "content-digest"} else value)
        for name, value in request.headers.items()
        if name != "signature-input"
    )
    body = json.loads(request.content) if request.content else None
    return request.method, str(request.url), body, signature_input, headers


async def test_async_and_sync_clients_send_identical_requests() -> None:
    sync_fake, async_fake = FakeExchange(), FakeExchange()
    with sync_client(sync_fake) as api:
        sync_results = exercise(api)
    async with async_client(async_fake) as aapi:
        at = datetime(2027, 1, 31, 1, 0, tzinfo=timezone(timedelta(hours=1)))
        async_results = [
            await aapi.enrol_member(reference="cust-42"),
            await aapi.balance("mem/01"),
            await aapi.create_session("mem/01", ttl_seconds=600),
            await aapi.earn("mem/01", 120, reference="order-991"),
            await aapi.earn(
                "mem/01",
                purchase=(Decimal("120.00"), "EUR"),
                reference="order-992",
                available_at=at,
                expires_at="2028-01-01T00:00:00Z",
            ),
            await aapi.burn("mem/01", 50, reference="order-993"),
            await aapi.create_hold("mem/01", 30, reference="till-1", expires_in=900),
            await aapi.capture_hold("hold_1", points=20),
            await aapi.void_hold("hold_2"),
            await aapi.reverse("txn_1", points=10, reference="return-1"),
            await aapi.get_transaction("txn_1"),
            await aapi.list_transactions(member_id="mem/01", type="earn", limit=10),
            await aapi.statement("run 7"),
        ]
    assert len(async_fake.verified) == len(sync_fake.verified) == len(EXPECTED)
    assert [request_shape(r) for r in async_fake.requests] == [
        request_shape(r) for r in sync_fake.requests
    ]
    assert [dict(r) for r in async_results] == [dict(r) for r in sync_results]
    assert [r.status for r in async_results] == [r.status for r in sync_results]


async def test_async_retry_keeps_the_idempotency_key_and_re_signs() -> None:
    fake = FakeExchange(problem(503, "service_unavailable"), httpx.ConnectError("reset"))
    async with async_client(fake) as api:
        result = await api.create_hold("mem_01", 30)
    assert result.status == 201
    assert_honest_retry(fake, 3)


async def test_async_errors_are_partner_api_errors() -> None:
    fake = FakeExchange(problem(422, "insufficient_points"))
    async with async_client(fake) as api:
        with pytest.raises(PartnerAPIError) as raised:
            await api.burn("mem_01", 5)
        response = await api.request("GET", "/v1/members/m/balance")
    assert raised.value.code == "insufficient_points"
    assert len(fake.requests) == 2
    assert response.status_code == 200


def test_rejected_signature_surfaces_as_a_partner_api_error() -> None:
    _, other_public = generate_keypair()
    other_private, _ = generate_keypair()
    fake = FakeExchange()
    api = PartnerClient(BASE_URL, KEY_ID, other_private, transport=httpx.MockTransport(fake))
    with api, pytest.raises(PartnerAPIError) as raised:
        api.balance("m")
    assert (raised.value.status, raised.value.code) == (401, "signature_invalid")
    assert other_public  # a key pair the exchange has never seen


def test_datetimes_are_sent_as_rfc3339_utc() -> None:
    moment = datetime(2027, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert client_module._time(moment) == "2027-06-01T12:00:00.500000Z"
