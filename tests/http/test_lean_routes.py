"""The lean routes (`exchange.lean`): earn, burn and the balance answered without
Litestar's router, exactly as the controllers answer them through it.

Each case is sent twice with fresh signatures, once through the app as served and once
with the lean layer taken out (its requests go straight to Litestar), and the two
answers must agree: status, headers and body, with only what differs between any two
requests (request ids, new transaction ids) masked."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from litestar import Litestar

from exchange.clock import FrozenClock
from exchange.lean import LeanRoutes
from partners.signing import load_private_key, sign_request
from tests.conftest import PUBLIC_URL
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


@pytest.fixture
async def member_id(grocer: OnboardedPartner) -> str:
    member = await grocer.client.enrol_member()
    await grocer.client.earn(member["member_id"], 500, reference="first")
    return str(member["member_id"])


def _lean(app: Litestar) -> LeanRoutes:
    lean = app.asgi_handler.app  # type: ignore[attr-defined]
    assert isinstance(lean, LeanRoutes)
    return lean


@contextmanager
def litestar_only(app: Litestar) -> Iterator[None]:
    """Every request goes to Litestar's router, as before the lean layer existed."""
    context = app.asgi_handler
    lean = _lean(app)
    context.app = lean.inner  # type: ignore[attr-defined]
    try:
        yield
    finally:
        context.app = lean  # type: ignore[attr-defined]


@contextmanager
def routed_by_litestar(app: Litestar) -> Iterator[list[str]]:
    """The paths of the requests the lean layer handed to Litestar."""
    lean = _lean(app)
    inner = lean.inner
    seen: list[str] = []

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"{scope['method']} {scope['path']}")
        await inner(scope, receive, send)

    lean.inner = spy
    try:
        yield seen
    finally:
        lean.inner = inner


_VARYING = {"request_id", "transaction_id", "posted_at"}


def _comparable(
    response: httpx.Response, varying: frozenset[str] = frozenset()
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body, with what differs between two equal requests masked
    (and `varying`: body fields, or headers, known to differ)."""
    skipped = {"x-request-id", "date"} | varying
    headers = {k: v for k, v in response.headers.items() if k not in skipped}
    try:
        body: Any = response.json()
    except json.JSONDecodeError:
        body = response.text
    if isinstance(body, dict):
        body = {k: ("<varies>" if k in _VARYING | varying else v) for k, v in body.items()}
    return response.status_code, headers, body


Case = Callable[[], Awaitable[httpx.Response]]


def _cases(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, member_id: str
) -> dict[str, Case]:
    def post(path: str, body: dict[str, Any] | bytes, **extra: Any) -> Case:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return lambda: signed(client, grocer, clock, "POST", path, body=raw, **extra)

    unknown = "mem_" + "f" * 32
    balance = f"/v1/members/{member_id}/balance"
    return {
        "balance": lambda: signed(client, grocer, clock, "GET", balance),
        "balance of an unknown member": lambda: signed(
            client, grocer, clock, "GET", f"/v1/members/{unknown}/balance"
        ),
        "balance of a malformed id": lambda: signed(
            client, grocer, clock, "GET", "/v1/members/not-an-id/balance"
        ),
        "balance unsigned": lambda: client.get(balance),
        "balance with a bad token": lambda: client.get(
            balance, headers={"Authorization": "Bearer nope"}
        ),
        "earn with a bad signature": lambda: client.post(
            "/v1/earn",
            content=b"{}",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
                "Signature-Input": 'sig1=("@method");created=1;keyid="x";alg="ed25519"',
                "Signature": "sig1=:AAAA:",
            },
        ),
        "earn for an unknown member": post(
            "/v1/earn", {"member_id": unknown, "points": 5, "reference": "r"}
        ),
        "earn with a bad field": post("/v1/earn", {"member_id": member_id, "points": "5"}),
        "earn with neither points nor a purchase": post("/v1/earn", {"member_id": member_id}),
        "earn that is not JSON": post("/v1/earn", b"{nope"),
        "earn as text": post(
            "/v1/earn",
            json.dumps({"member_id": member_id, "points": 5}).encode(),
            content_type="text/plain",
        ),
        "earn over 64 KiB": post("/v1/earn", b" " * (65 * 1024)),
        "burn beyond the balance": post(
            "/v1/burn", {"member_id": member_id, "points": 10**6, "reference": "big"}
        ),
        "earn": post("/v1/earn", {"member_id": member_id, "points": 7, "reference": "e"}),
        "burn": post("/v1/burn", {"member_id": member_id, "points": 3, "reference": "b"}),
    }


async def test_the_lean_routes_answer_as_litestar_does(
    app: Litestar,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
) -> None:
    for name, case in _cases(client, grocer, clock, member_id).items():
        with routed_by_litestar(app) as routed:
            lean = await case()
        assert routed == [], f"{name}: went to Litestar's router"
        with litestar_only(app):
            reference = await case()
        varying: frozenset[str] = frozenset()
        if name in {"earn", "burn"}:
            # The same request twice moves the balance twice: the second answer's balance
            # moved by exactly the points once more (its length may differ with it).
            assert lean.status_code == reference.status_code == 201, name
            sign = 1 if name == "earn" else -1
            moved = reference.json()["balance_after"]["available"]
            assert moved - lean.json()["balance_after"]["available"] == sign * lean.json()["points"]
            varying = frozenset({"balance_after", "content-length"})
        assert _comparable(lean, varying) == _comparable(reference, varying), name
        assert lean.status_code < 500, name


async def test_a_replay_is_the_same_bytes_whichever_path_answers(
    app: Litestar,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
) -> None:
    body = json.dumps({"member_id": member_id, "points": 9, "reference": "twice"}).encode()
    key = str(uuid.uuid4())
    first = await signed(client, grocer, clock, "POST", "/v1/earn", body=body, idempotency_key=key)
    with litestar_only(app):
        again = await signed(
            client, grocer, clock, "POST", "/v1/earn", body=body, idempotency_key=key
        )
    thrice = await signed(client, grocer, clock, "POST", "/v1/earn", body=body, idempotency_key=key)
    assert first.status_code == again.status_code == thrice.status_code == 201
    assert first.content == again.content == thrice.content
    assert "idempotency-replayed" not in first.headers
    assert again.headers["idempotency-replayed"] == thrice.headers["idempotency-replayed"] == "true"
    balance = await signed(client, grocer, clock, "GET", f"/v1/members/{member_id}/balance")
    assert balance.json()["available"] == 509


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/earn/"),
        ("PUT", "/v1/earn"),
        ("GET", "/v1/burn"),
        ("HEAD", "/v1/members/{member}/balance"),
        ("GET", "/v1/members/{member}/balance/"),
        ("GET", "/v1/members/{member}/transactions"),
        ("POST", "/v1/holds"),
    ],
)
async def test_anything_else_goes_to_litestar(
    app: Litestar,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
    method: str,
    path: str,
) -> None:
    path = path.format(member=member_id)
    with routed_by_litestar(app) as routed:
        lean = await signed(client, grocer, clock, method, path, body=b"{}")
    assert routed == [f"{method} {path}"]
    with litestar_only(app):
        reference = await signed(client, grocer, clock, method, path, body=b"{}")
    assert _comparable(lean)[:2] == _comparable(reference)[:2]


async def test_a_host_litestar_refuses_is_refused_as_before(
    app: Litestar, client: httpx.AsyncClient, member_id: str
) -> None:
    headers = {"Host": "bad^host"}
    with routed_by_litestar(app) as routed:
        response = await client.get(f"{PUBLIC_URL}/v1/members/{member_id}/balance", headers=headers)
    assert routed == [f"GET /v1/members/{member_id}/balance"]
    assert response.status_code == 400


async def test_a_client_gone_mid_answer_is_not_answered_twice(
    app: Litestar,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
) -> None:
    """The answer is sent outside the error mapping, as litestar sends it: a send that
    fails (the client went away) ends the request, with no problem+json after the body."""
    path = f"/v1/members/{member_id}/balance"
    signature = sign_request(
        method="GET",
        url=PUBLIC_URL + path,
        headers={},
        body=None,
        key_id=grocer.key_id,
        private_key=load_private_key(grocer.private_key),
        created=int(clock.now().timestamp()),
    )
    headers = [(b"host", b"exchange.test")]
    headers += [(name.lower().encode(), value.encode()) for name, value in signature.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("exchange.test", 443),
        "state": {},
    }
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == ["http.response.start", "http.response.body"]
