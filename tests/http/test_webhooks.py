"""Webhooks (contract §10): a real HTTP receiver on 127.0.0.1 verifies every delivery with
the third-party `http-message-signatures` library, fails on purpose, and sees the retries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver
from http_message_signatures.algorithms import ED25519
from litestar import Litestar

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.wiring import Services
from partners.signing import b64url_decode, generate_keypair
from partners.webhooks.service import WebhookService
from settlement.events import emit
from tests.conftest import PUBLIC_URL
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed
from tests.servers import EXCHANGE, server_env

BACKOFF_S = 0.05
# The key-encryption key of these tests' signing keys (an external database needs one).
KEK = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        public_url=PUBLIC_URL,
        scheduler_enabled=False,
        log_level="WARNING",
        webhooks_allow_http=True,
        webhook_backoff_s=BACKOFF_S,
        webhook_retry_window_s=2,
        webhook_key_secret=(base64.b64decode(KEK),),
    )


@dataclass
class Receiver:
    """A partner's webhook endpoint: answers 500 to the first `failures` deliveries."""

    failures: int = 0
    delay_s: float = 0.0  # how long it takes to answer, once it has the delivery
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)  # every attempt, verified or not
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/coalition"

    def verify(self, path: str, headers: Any, body: bytes) -> str:
        """The receiver's check, as docs/partners.md shows it: the signature with the
        exchange's public key, the tag, the covered components, and the body's digest."""
        message = SimpleNamespace(
            method="POST", url=f"http://127.0.0.1:{self.port}{path}", headers=headers
        )
        verifier = HTTPMessageVerifier(
            signature_algorithm=ED25519,
            key_resolver=MappingKeyResolver(public_keys=self.keys, private_keys={}),
        )
        results = verifier.verify(
            message,
            expect_tag="coalition-v1",
            require_components=("@method", "@authority", "@path", "content-digest"),
            body=body,
        )
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if headers["Content-Digest"] != f"sha-256=:{digest}:":
            raise ValueError("digest mismatch")
        key_id: str = results[0].parameters["keyid"]
        return key_id

    def handle(self, path: str, headers: Any, body: bytes) -> int:
        try:
            key_id = self.verify(path, headers, body)
            verified = True
        except Exception:  # a forged or broken signature: refused, recorded
            key_id, verified = "", False
        event = json.loads(body)
        self.seen.append({"event": event, "verified": verified, "key_id": key_id})
        time.sleep(self.delay_s)
        if not verified:
            return 401
        attempts = sum(1 for s in self.seen if s["event"]["event_id"] == event["event_id"])
        return 500 if attempts <= self.failures else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle(self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


async def _subscribe(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    events: list[str] | None = None,
) -> None:
    keys = (await client.get("/v1/exchange-keys")).json()["keys"]
    receiver.keys = {
        k["key_id"]: Ed25519PublicKey.from_public_bytes(b64url_decode(k["public_key"]))
        for k in keys
    }
    body = {
        "url": receiver.url,
        "events": events or ["batch.completed", "key.revoked", "statement.ready"],
    }
    put = await signed(client, grocer, clock, "PUT", "/v1/webhook", body=msgspec.json.encode(body))
    assert put.status_code == 200, put.text


async def _until(condition: Any, what: str) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _deliveries(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, query: str = ""
) -> list[dict[str, Any]]:
    got = await signed(client, grocer, clock, "GET", f"/v1/webhook/deliveries{query}")
    assert got.status_code == 200, got.text
    found: list[dict[str, Any]] = got.json()["deliveries"]
    return found


async def test_a_batch_completed_event_is_signed_retried_and_then_delivered(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, receiver: Receiver
) -> None:
    receiver.failures = 2
    await _subscribe(client, grocer, clock, receiver)
    member = await grocer.client.enrol_member()
    item = {
        "item_id": "w-1",
        "type": "earn",
        "member_id": member["member_id"],
        "reference": "r",
        "points": 4,
    }
    batch = await signed(
        client, grocer, clock, "POST", "/v1/batches", body=msgspec.json.encode({"items": [item]})
    )
    assert batch.status_code == 202, batch.text
    await _until(lambda: any(s["verified"] for s in receiver.seen[2:]), "the third attempt")
    attempts = [s for s in receiver.seen if s["event"]["type"] == "batch.completed"]
    assert len(attempts) == 3
    assert all(a["verified"] for a in attempts)
    event = attempts[0]["event"]
    assert {a["event"]["event_id"] for a in attempts} == {event["event_id"]}  # one id to dedupe on
    assert event["data"] == {
        "batch_id": batch.json()["batch_id"],
        "items": 1,
        "posted": 1,
        "rejected": 0,
    }
    assert set(event) == {"event_id", "type", "created_at", "data"}
    keys = (await client.get("/v1/exchange-keys")).json()["keys"]
    assert attempts[0]["key_id"] in {k["key_id"] for k in keys if k["status"] == "active"}

    async def delivered() -> list[dict[str, Any]]:
        return await _deliveries(client, grocer, clock, "?status=delivered")

    for _ in range(100):
        if await delivered():
            break
        await asyncio.sleep(0.05)
    [record] = await delivered()
    assert (record["event_id"], record["attempts"], record["last_status"]) == (
        event["event_id"],
        3,
        200,
    )

    # Retry on request: sent once more, same event id.
    retried = await signed(
        client, grocer, clock, "POST", f"/v1/webhook/deliveries/{event['event_id']}/retry"
    )
    assert retried.status_code == 202, retried.text
    await _until(lambda: len(receiver.seen) == 4, "the retried delivery")
    assert receiver.seen[3]["event"]["event_id"] == event["event_id"]
    missing = await signed(client, grocer, clock, "POST", "/v1/webhook/deliveries/evt_nope/retry")
    assert missing.status_code == 404
    assert missing.json()["code"] == "delivery_not_found"

    # A resend of the same retry (same Idempotency-Key) is answered from the first and
    # schedules no further delivery.
    path = f"/v1/webhook/deliveries/{event['event_id']}/retry"
    first = await signed(client, grocer, clock, "POST", path, idempotency_key="retry-once")
    await _until(lambda: len(receiver.seen) == 5, "the delivery retried once more")
    resent = await signed(client, grocer, clock, "POST", path, idempotency_key="retry-once")
    assert (resent.status_code, resent.headers.get("idempotency-replayed")) == (202, "true")
    assert resent.content == first.content
    await asyncio.sleep(0.5)
    assert len(receiver.seen) == 5, "a replayed retry sent the event again"


async def test_a_stopping_server_finishes_the_delivery_in_flight(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    app: Litestar,
) -> None:
    """The deliverer is not cut off while a receiver is answering: the delivery is
    recorded as delivered, so it is not sent again after the restart."""
    receiver.delay_s = 0.5
    await _subscribe(client, grocer, clock, receiver)
    member = await grocer.client.enrol_member()
    item = {"item_id": "w-s", "type": "earn", "member_id": member["member_id"], "points": 1}
    body = msgspec.json.encode({"items": [item | {"reference": "r"}]})
    assert (await signed(client, grocer, clock, "POST", "/v1/batches", body=body)).is_success
    await _until(lambda: receiver.seen, "the delivery to arrive")
    services: Services = app.state.services
    await asyncio.wait_for(services.webhooks.stop(), 20)
    [record] = await _deliveries(client, grocer, clock)
    assert (record["status"], record["attempts"], record["last_status"]) == ("delivered", 1, 200)
    assert len(receiver.seen) == 1


async def test_a_receiver_that_keeps_failing_gets_a_failed_delivery(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    app: Litestar,
) -> None:
    receiver.failures = 1000
    await _subscribe(client, grocer, clock, receiver)
    services: Services = app.state.services
    async with services.engine.begin() as conn:
        # Any row in the outbox is delivered, whoever wrote it (here: as statement.ready).
        await emit(conn, "grocer", "statement.ready", {"document_id": "doc-1"}, clock.now())
    for _ in range(200):
        failed = await _deliveries(client, grocer, clock, "?status=failed")
        if failed:
            break
        await asyncio.sleep(0.05)
    assert len(failed) == 1
    assert failed[0]["last_status"] == 500
    # Waits of 0.05 s doubling within a 2 s window: after attempts 1-5 the waits add up to
    # 0.05+0.1+0.2+0.4+0.8 = 1.55 s; one more wait (1.6 s) would pass 2 s, so the 6th is last.
    assert failed[0]["attempts"] == len(receiver.seen) == 6
    assert all(s["verified"] for s in receiver.seen)


async def test_key_revoked_is_emitted_with_the_revocation_and_delivered(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    admin_headers: dict[str, str],
) -> None:
    await _subscribe(client, grocer, clock, receiver, events=["key.revoked"])
    _, public_key = generate_keypair()
    added = await client.post(
        "/v1/admin/partners/grocer/keys", json={"public_key": public_key}, headers=admin_headers
    )
    key_id = added.json()["key_id"]
    revoked = await client.delete(f"/v1/admin/partners/grocer/keys/{key_id}", headers=admin_headers)
    assert revoked.status_code == 200, revoked.text
    await _until(lambda: len(receiver.seen) == 1, "key.revoked")
    assert receiver.seen[0]["event"]["type"] == "key.revoked"
    assert receiver.seen[0]["event"]["data"] == {"key_id": key_id}


async def test_an_event_the_partner_did_not_subscribe_to_is_skipped(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    app: Litestar,
) -> None:
    await _subscribe(client, grocer, clock, receiver, events=["key.revoked"])
    services: Services = app.state.services
    async with services.engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "doc-2"}, clock.now())
    for _ in range(100):
        if await _deliveries(client, grocer, clock, "?status=skipped"):
            break
        await asyncio.sleep(0.05)
    assert len(await _deliveries(client, grocer, clock, "?status=skipped")) == 1
    assert receiver.seen == []


async def test_each_event_has_exactly_one_owner_across_workers(
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    app: Litestar,
    client: httpx.AsyncClient,
    settings: Settings,
) -> None:
    await _subscribe(client, grocer, clock, receiver, events=["statement.ready"])
    services: Services = app.state.services
    await services.webhooks.stop()  # only the two workers below deliver
    async with services.engine.begin() as conn:
        for n in range(30):
            await emit(conn, "grocer", "statement.ready", {"document_id": f"doc-{n}"}, clock.now())
    workers = [WebhookService(services.engine, clock, settings) for _ in range(2)]
    async with httpx.AsyncClient() as http:
        for _ in range(5):
            await asyncio.gather(*(w.deliver_due(http) for w in workers))
    ids = [s["event"]["event_id"] for s in receiver.seen]
    assert len(ids) == 30
    assert len(set(ids)) == 30


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"url": "http://partner.example/hook", "events": ["batch.completed"]},
            "webhook_url_invalid",
        ),
        ({"url": "ftp://127.0.0.1/hook", "events": ["batch.completed"]}, "webhook_url_invalid"),
        ({"url": "https://partner.example/hook", "events": ["batch.deleted"]}, "validation_error"),
        ({"url": "https://partner.example/hook", "events": []}, "validation_error"),
        (
            {"url": "https://partner.example/hook", "events": ["key.revoked"], "x": 1},
            "validation_error",
        ),
    ],
    ids=["http-not-loopback", "ftp", "unknown-event", "no-events", "unknown-field"],
)
async def test_bad_subscriptions_are_refused(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    body: dict[str, Any],
    code: str,
) -> None:
    put = await signed(client, grocer, clock, "PUT", "/v1/webhook", body=msgspec.json.encode(body))
    assert put.status_code == 422, put.text
    assert put.json()["code"] == code
    assert (await signed(client, grocer, clock, "GET", "/v1/webhook")).status_code == 404


async def test_subscription_is_shown_replaced_and_removed(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    body = {"url": "https://partner.example/hook", "events": ["batch.completed"]}
    assert (
        await signed(client, grocer, clock, "PUT", "/v1/webhook", body=msgspec.json.encode(body))
    ).status_code == 200
    shown = await signed(client, grocer, clock, "GET", "/v1/webhook")
    assert shown.json()["url"] == body["url"]
    assert shown.json()["events"] == body["events"]
    gone = await signed(client, grocer, clock, "DELETE", "/v1/webhook")
    assert gone.status_code == 204
    assert (await signed(client, grocer, clock, "GET", "/v1/webhook")).json()[
        "code"
    ] == "webhook_not_found"


async def test_key_rotation_lists_both_keys_and_signs_with_the_new_one(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    receiver: Receiver,
    app: Litestar,
    database_url: str,
) -> None:
    before = (await client.get("/v1/exchange-keys")).json()["keys"]
    assert [k["status"] for k in before] == ["active"]
    rotated = await asyncio.to_thread(
        subprocess.run,
        [*EXCHANGE, "webhooks", "rotate-key"],
        env=server_env(EXCHANGE_DATABASE_URL=database_url, EXCHANGE_WEBHOOK_KEY_SECRET=KEK),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert rotated.returncode == 0, rotated.stderr
    after = {
        k["key_id"]: k["status"] for k in (await client.get("/v1/exchange-keys")).json()["keys"]
    }
    assert after[before[0]["key_id"]] == "retired"
    [new_key] = [key_id for key_id, status in after.items() if status == "active"]
    assert new_key in rotated.stdout
    await _subscribe(client, grocer, clock, receiver, events=["statement.ready"])
    services: Services = app.state.services
    async with services.engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "doc-r"}, clock.now())
    await _until(lambda: len(receiver.seen) == 1, "the delivery")
    assert receiver.seen[0]["verified"]
    assert receiver.seen[0]["key_id"] == new_key
