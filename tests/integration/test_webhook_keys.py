"""The exchange's webhook signing keys at rest: sealed by the configured key-encryption
key (KEK), re-sealed on a KEK rotation, and never made or used without one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from partners.signing import public_key_b64url
from partners.webhooks.keyring import KeyRing, KeySecretMissing, KeySecretUnknown, kek_id
from partners.webhooks.service import WebhookService
from settlement.events import emit
from tests.servers import EXCHANGE, server_env
from tests.support import add_partner

OLD, NEW = bytes(range(32)), bytes(range(32, 64))


def _service(
    engine: AsyncEngine, clock: FrozenClock, database_url: str, *keks: bytes
) -> WebhookService:
    settings = Settings(database_url=database_url, webhook_key_secret=keks)
    return WebhookService(engine, clock, settings)


async def _stored(engine: AsyncEngine) -> list[tuple[str, str, bytes, str | None, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT key_id, public_key, private_key, kek_id, status FROM exchange_keys "
                "ORDER BY created_at, key_id"
            )
        )
        return [(r.key_id, r.public_key, bytes(r.private_key), r.kek_id, r.status) for r in rows]


def _opens_to_its_public_key(
    keks: tuple[bytes, ...], row: tuple[str, str, bytes, str | None, str]
) -> bool:
    key_id, public_key, stored, sealed_by, _ = row
    private = KeyRing(keks).open(key_id, sealed_by, stored)
    return public_key_b64url(Ed25519PrivateKey.from_private_bytes(private)) == public_key


class Receiver:
    """An in-process HTTP endpoint (httpx transport): records each signed delivery."""

    def __init__(self) -> None:
        self.key_ids: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.key_ids.append(request.headers["Signature-Input"].split('keyid="')[1].split('"')[0])
        return httpx.Response(200)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


async def test_the_database_holds_only_sealed_private_keys(
    engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    service = _service(engine, clock, database_url, NEW)
    listed = (await service.keys()).keys
    [row] = await _stored(engine)
    key_id, public_key, stored, sealed_by, status = row
    assert [(k.key_id, k.public_key, k.status) for k in listed] == [(key_id, public_key, status)]
    assert sealed_by == kek_id(NEW)
    assert len(stored) == 12 + 32 + 16  # nonce, ciphertext, tag: not a 32-byte raw key
    assert _opens_to_its_public_key((NEW,), row)
    with pytest.raises(KeySecretUnknown):
        _opens_to_its_public_key((OLD,), row)  # another KEK does not open it
    # The ciphertext names no secret: the KEK itself is nowhere in the row.
    assert NEW not in stored
    assert hashlib.sha256(NEW).hexdigest() not in sealed_by


async def test_a_plaintext_key_from_before_is_sealed_at_the_first_start(
    engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes_raw()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO exchange_keys (key_id, public_key, private_key, status, created_at)"
                " VALUES ('exk_legacy', :public, :raw, 'active', now())"
            ),
            {"public": public_key_b64url(private), "raw": raw},
        )
    await _service(engine, clock, database_url, NEW).ensure_key()
    [row] = await _stored(engine)
    assert (row[0], row[3], row[4]) == ("exk_legacy", kek_id(NEW), "active")  # same key
    assert raw not in row[2]
    assert _opens_to_its_public_key((NEW,), row)


async def test_a_kek_rotation_re_seals_every_key_and_the_old_secret_can_go(
    engine: AsyncEngine, clock: FrozenClock, database_url: str, receiver: Receiver
) -> None:
    await add_partner(engine, clock, "grocer")
    before = _service(engine, clock, database_url, OLD)
    await before.ensure_key()
    await before.rotate_key()  # a retired key and an active one, both sealed by OLD
    assert [row[3] for row in await _stored(engine)] == [kek_id(OLD)] * 2

    assert await _service(engine, clock, database_url, NEW, OLD).rewrap_keys() == (
        kek_id(NEW),
        2,
    )
    rows = await _stored(engine)
    assert [row[3] for row in rows] == [kek_id(NEW)] * 2
    assert all(_opens_to_its_public_key((NEW,), row) for row in rows)

    # Now NEW alone signs deliveries with the active key...
    await _subscribe(engine)
    async with engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "d-1"}, clock.now())
    after = _service(engine, clock, database_url, NEW)
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        await _until_handled(after, http)
    assert receiver.key_ids == [row[0] for row in rows if row[4] == "active"]
    # ... and OLD alone opens nothing any more: a clear error, the event waits.
    async with engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "d-2"}, clock.now())
    stale = _service(engine, clock, database_url, OLD)
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        with pytest.raises(KeySecretUnknown, match="rewrap-keys"):
            await _until_handled(stale, http)
    assert await _statuses(engine) == {"d-1": ("delivered", 1), "d-2": ("pending", 0)}


async def test_a_lost_kek_is_recovered_by_rotating_the_signing_key(
    engine: AsyncEngine, clock: FrozenClock, database_url: str, receiver: Receiver
) -> None:
    await add_partner(engine, clock, "grocer")
    await _service(engine, clock, database_url, OLD).ensure_key()
    [(lost_key, *_)] = await _stored(engine)
    fresh = _service(engine, clock, database_url, NEW)  # OLD is gone for good
    with pytest.raises(KeySecretUnknown):
        await fresh.ensure_key()  # the active key cannot be opened: said, not skipped
    new_key = await fresh.rotate_key()
    assert await fresh.rewrap_keys() == (kek_id(NEW), 0)  # the retired one is left as is
    statuses = {row[0]: (row[3], row[4]) for row in await _stored(engine)}
    assert statuses == {
        lost_key: (kek_id(OLD), "retired"),
        new_key: (kek_id(NEW), "active"),
    }
    await _subscribe(engine)
    async with engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "d-1"}, clock.now())
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        await _until_handled(_service(engine, clock, database_url, NEW), http)
    assert receiver.key_ids == [new_key]


async def test_without_a_secret_no_key_is_made_and_events_wait_until_one_is_set(
    engine: AsyncEngine, clock: FrozenClock, database_url: str, receiver: Receiver
) -> None:
    await add_partner(engine, clock, "grocer")
    await _subscribe(engine)
    bare = _service(engine, clock, database_url)
    assert (await bare.keys()).keys == []  # listed as nothing, not a 500, no key made
    async with engine.begin() as conn:
        await emit(conn, "grocer", "statement.ready", {"document_id": "d-1"}, clock.now())
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        with pytest.raises(KeySecretMissing):
            await _until_handled(bare, http)
        assert await _stored(engine) == []
        assert await _statuses(engine) == {"d-1": ("pending", 0)}  # fanned out, waiting
        assert receiver.key_ids == []
        await _until_handled(_service(engine, clock, database_url, NEW), http)
    assert await _statuses(engine) == {"d-1": ("delivered", 1)}
    assert len(receiver.key_ids) == 1


async def test_rewrap_keys_on_the_command_line(
    engine: AsyncEngine, clock: FrozenClock, database_url: str
) -> None:
    await _service(engine, clock, database_url, OLD).ensure_key()
    both = f"{base64.b64encode(NEW).decode()},{base64.b64encode(OLD).decode()}"
    done = await asyncio.to_thread(
        subprocess.run,
        [*EXCHANGE, "webhooks", "rewrap-keys"],
        env=server_env(EXCHANGE_DATABASE_URL=database_url, EXCHANGE_WEBHOOK_KEY_SECRET=both),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"1 webhook signing keys re-encrypted; every key is sealed by {kek_id(NEW)}" in (
        " ".join(done.stdout.split())
    )
    assert [row[3] for row in await _stored(engine)] == [kek_id(NEW)]
    refused = await asyncio.to_thread(
        subprocess.run,
        [*EXCHANGE, "webhooks", "rotate-key"],
        env=server_env(EXCHANGE_DATABASE_URL=database_url),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "EXCHANGE_WEBHOOK_KEY_SECRET" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(await _stored(engine)) == 1


async def _subscribe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_subscriptions (partner_id, url, events, updated_at) VALUES "
                "('grocer', 'https://partner.example/hook', '[\"statement.ready\"]', now())"
            )
        )


async def _until_handled(service: WebhookService, http: httpx.AsyncClient) -> None:
    """Deliver until an event was handled (fan-out waits for older transactions to end)."""
    for _ in range(100):
        if await service.deliver_due(http):
            return
    raise AssertionError("nothing was delivered")


async def _statuses(engine: AsyncEngine) -> dict[str, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT o.data->>'document_id' AS doc, d.status, d.attempts FROM webhook_outbox o"
                " JOIN webhook_deliveries d USING (event_id)"
            )
        )
        return {r.doc: (r.status, r.attempts) for r in rows}
