"""`WebhookService`: partners' subscriptions, the delivery worker, the exchange's keys.

Delivery (contract §10): the worker gives every new outbox event a delivery row (the
fan-out: from a cursor over (tx_id, event_id), one process at a time, so a cycle reads
only the new events; see `store.fan_out` for why it waits for older transactions to
end), then claims
due rows with `FOR UPDATE SKIP LOCKED` (exactly one owner per event across server
processes) and POSTs `{"event_id", "type", "created_at", "data"}` to the partner's URL,
signed with RFC 9421 Ed25519 (tag `coalition-v1`) by the exchange's active key; the
`Idempotency-Key` header carries the `event_id`. A non-2xx answer or a timeout (10 s) is
retried after `backoff * 2**(attempt-1)` until the waits add up to the retry window
(24 h by default); then the delivery is `failed`. Oldest events go first.

Delivery times are wall-clock (`time`), not the exchange's business clock: they schedule
network retries, never postings, and a frozen test clock must not stop them.

Keys: the first start creates an Ed25519 key; `rotate_key()` (`exchange webhooks
rotate-key`) makes a new active key and keeps the old one listed as `retired` at
`GET /v1/exchange-keys`, so receivers can fetch the new public key before it is used.
The private key is kept in the database (table `exchange_keys`) sealed with AES-256-GCM
by a key-encryption key from the configuration (`partners.webhooks.keyring`); without
one (an external database and no EXCHANGE_WEBHOOK_KEY_SECRET) no key is made or used,
the worker says so once, and the events wait. `rewrap_keys()` (`exchange webhooks
rewrap-keys`) re-seals every key under the first KEK after a KEK rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import metrics
from exchange.background import finish_or_cancel
from exchange.clock import Clock
from exchange.config import ConfigError, Settings
from exchange.errors import DeliveryNotFound, Unprocessable, WebhookNotFound, WebhookUrlInvalid
from exchange.logs import get_logger
from exchange.service import Idempotency, Outcome, remember, replay_or_claim
from partners.signing import public_key_b64url, sign_request
from partners.webhooks import store
from partners.webhooks.events import EVENT_TYPES
from partners.webhooks.keyring import KeyRing, KeySecretMissing, KeySecretUnknown
from partners.webhooks.schemas import (
    DeliveryRetry,
    ExchangeKey,
    ExchangeKeys,
    Webhook,
    WebhookDeliveries,
    WebhookDelivery,
)

__all__ = ["DELIVERY_STATUSES", "WebhookService"]

_log = get_logger("partners.webhooks")
TIMEOUT_S = 10.0
CLAIM_MAX = 20
FAN_OUT_MAX = 500
DELIVERY_STATUSES = ("pending", "delivered", "failed", "skipped")


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey


def _wall_now() -> datetime:
    return datetime.now(UTC)


class WebhookService:
    def __init__(self, engine: AsyncEngine, clock: Clock, settings: Settings) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self._keyring: KeyRing | None = None
        self._keys_ready = False
        self._unavailable: str | None = None
        self.allow_http = settings.webhooks_allow_http
        self.backoff_s = settings.webhook_backoff_s
        self.window_s = settings.webhook_retry_window_s
        self.poll_s = min(1.0, self.backoff_s)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, partner_id: str, url: str, events: list[str]) -> Webhook:
        self._check_url(url)
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown or not events:
            raise Unprocessable(f"events must be some of {', '.join(EVENT_TYPES)}.")
        async with self.engine.begin() as conn:
            row = await store.put_subscription(
                conn, partner_id, url, sorted(set(events)), self.clock.now()
            )
        return _subscription_view(row)

    async def subscription(self, partner_id: str) -> Webhook:
        async with self.engine.connect() as conn:
            row = await store.get_subscription(conn, partner_id)
        if row is None:
            raise WebhookNotFound()
        return _subscription_view(row)

    async def unsubscribe(self, partner_id: str) -> None:
        async with self.engine.begin() as conn:
            if not await store.delete_subscription(conn, partner_id):
                raise WebhookNotFound()

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if len(url) > 2000 or not parts.hostname:
            raise WebhookUrlInvalid("url must be an absolute https:// URL.")
        if parts.scheme == "https":
            return
        if parts.scheme == "http" and self.allow_http and _is_loopback(parts.hostname):
            return
        raise WebhookUrlInvalid(
            "url must be https:// (http:// only to a loopback host with "
            "EXCHANGE_WEBHOOKS_ALLOW_HTTP=true)."
        )

    # --- deliveries ----------------------------------------------------------------------

    async def deliveries(
        self, partner_id: str, status: str | None, after: str | None, limit: int
    ) -> WebhookDeliveries:
        if status is not None and status not in DELIVERY_STATUSES:
            raise Unprocessable(f"status must be one of {', '.join(DELIVERY_STATUSES)}.")
        async with self.engine.connect() as conn:
            rows = await store.list_deliveries(conn, partner_id, status, after, limit)
        return WebhookDeliveries(
            deliveries=[_delivery_view(row) for row in rows],
            next=rows[-1].event_id if rows and len(rows) == limit else msgspec.UNSET,
        )

    async def retry(
        self, partner_id: str, event_id: str, idempotency: Idempotency | None
    ) -> Outcome:
        """Schedule a delivery again, once per Idempotency-Key: a resend of the same request
        gets the first answer and schedules nothing more (contract §2.2)."""
        async with self.engine.begin() as conn:
            replay = await replay_or_claim(conn, partner_id, idempotency)
            if replay is not None:
                return replay
            if not await store.retry_delivery(conn, partner_id, event_id[:64], _wall_now()):
                raise DeliveryNotFound(f"No delivery {event_id[:64]}.")
            body = msgspec.json.encode(DeliveryRetry(event_id=event_id, status="pending"))
            await remember(conn, partner_id, idempotency=idempotency, status_code=202, body=body)
        self._wake.set()
        return Outcome(202, body)

    # --- keys ----------------------------------------------------------------------------

    def keyring(self) -> KeyRing:
        """The key-encryption keys; `KeySecretMissing` (a ConfigError) when none is set for
        an external database."""
        if self._keyring is None:
            self._keyring = KeyRing.for_settings(self.settings)
        return self._keyring

    async def keys(self) -> ExchangeKeys:
        """The public keys. Makes the first key (once per process) if a key-encryption key
        is configured; without one, or with a wrong one (the worker says so), it lists what
        exists: the public halves need no secret."""
        with contextlib.suppress(ConfigError):
            await self._prepare_keys()
        async with self.engine.connect() as conn:
            rows = await store.list_keys(conn)
        return ExchangeKeys(
            keys=[
                ExchangeKey(key_id=r.key_id, public_key=r.public_key, status=r.status) for r in rows
            ]
        )

    async def ensure_key(self) -> None:
        """An active key exists, and every stored key is sealed by the current KEK."""
        keyring = self.keyring()
        async with self.engine.begin() as conn:
            await store.lock_keys(conn)
            await self._reseal(conn, keyring)
            if await store.active_key(conn) is None:
                await self._new_key(conn, keyring)

    async def rotate_key(self) -> str:
        """A new active key; the previous one stays listed as retired."""
        keyring = self.keyring()
        async with self.engine.begin() as conn:
            await store.lock_keys(conn)
            return await self._new_key(conn, keyring)

    async def rewrap_keys(self) -> tuple[str, int]:
        """Re-seal every stored private key under the first key-encryption key (after a
        KEK rotation; plaintext keys from before 0010 too). Returns (kek id, keys re-sealed)."""
        keyring = self.keyring()
        async with self.engine.begin() as conn:
            await store.lock_keys(conn)
            count = await self._reseal(conn, keyring)
        return keyring.current, count

    async def _reseal(self, conn: Any, keyring: KeyRing) -> int:
        resealed = 0
        for row in await store.keys_to_seal(conn, keyring.current):
            try:
                private = keyring.open(row.key_id, row.kek_id, row.private_key)
            except KeySecretUnknown:
                # A retired key never signs again: only its public half matters, so a
                # lost KEK costs nothing once `rotate-key` has retired what it sealed.
                if row.status == "active":
                    raise
                _log.warning("webhook_retired_key_unreadable", key_id=row.key_id)
                continue
            await store.reseal_key(conn, row.key_id, keyring.seal(row.key_id, private))
            resealed += 1
        if resealed:
            _log.info("webhook_keys_resealed", kek_id=keyring.current, keys=resealed)
        return resealed

    async def _new_key(self, conn: Any, keyring: KeyRing) -> str:
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        key_id = f"exk_{secrets.token_hex(12)}"
        sealed = keyring.seal(key_id, raw)
        await store.insert_key(conn, key_id, public_key_b64url(private), sealed, self.clock.now())
        return key_id

    async def _prepare_keys(self) -> None:
        """Once per process, before the first claim: an active key, every key sealed by
        the current KEK. Without a KEK there is nothing to prepare (and nothing is sent)."""
        if not self._keys_ready:
            with contextlib.suppress(KeySecretMissing):
                await self.ensure_key()
                self._keys_ready = True

    async def _signing_key(self, conn: Any) -> SigningKey:
        """The active key, read on each claim (a rotation elsewhere takes effect at once)
        and opened with the KEKs."""
        keyring = self.keyring()
        row = await store.active_key(conn)
        if row is None:
            raise KeySecretUnknown("No active webhook signing key; it is made at start.")
        private = keyring.open(row.key_id, row.kek_id, row.private_key)
        return SigningKey(row.key_id, Ed25519PrivateKey.from_private_bytes(private))

    # --- the worker ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="webhook-worker")

    async def stop(self) -> None:
        """Let the round of deliveries in hand finish (each attempt is bounded by
        TIMEOUT_S); one still running after that is cancelled, and its claim rolls back:
        those deliveries are sent again later, with the same event_id."""
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is not None:
            await finish_or_cancel([task], grace_s=TIMEOUT_S, worker="webhook-worker")

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as http:
            while not self._stopping:
                try:
                    worked = await self.deliver_due(http)
                    self._unavailable = None
                except ConfigError as exc:  # no or a wrong KEK: the deliveries wait
                    if self._unavailable != str(exc):  # said once, not every second
                        _log.error("webhook_signing_unavailable", detail=str(exc))
                    self._unavailable = str(exc)
                    worked = 0
                except Exception as exc:  # the database away, not migrated: wait, resume
                    _log.warning(
                        "webhook_worker_failed", error=type(exc).__name__, detail=str(exc)[:300]
                    )
                    worked = 0
                with contextlib.suppress(Exception):  # the database away: said above
                    metrics.WEBHOOK_BACKLOG.set(await self.backlog())
                if not worked and not self._stopping:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def backlog(self) -> int:
        """Events written but not yet delivered (what the console and /metrics show)."""
        async with self.engine.connect() as conn:
            return await store.backlog(conn)

    async def deliver_due(self, http: httpx.AsyncClient) -> int:
        """Fan out new events, then deliver the due ones once (each in its claim's database
        transaction). Returns how many deliveries it handled."""
        await self.fan_out()
        await self._prepare_keys()
        async with self.engine.begin() as conn:
            rows = await store.claim_due(conn, _wall_now(), CLAIM_MAX)
            if not rows:
                return 0
            # Opening the key may fail (no key-encryption key): the claim rolls back and
            # the deliveries wait, untouched.
            key = await self._signing_key(conn) if any(_wanted(row) for row in rows) else None
            by_partner: dict[str, list[Any]] = {}
            for row in rows:
                by_partner.setdefault(row.partner_id, []).append(row)

            async def in_order(mine: list[Any]) -> list[tuple[str, dict[str, Any]]]:
                # One partner's events one after another, oldest first; partners in
                # parallel, so one slow receiver does not hold back the others.
                return [(row.event_id, await self._attempt(http, key, row)) for row in mine]

            done = await asyncio.gather(*(in_order(mine) for mine in by_partner.values()))
            for event_id, values in (pair for pairs in done for pair in pairs):
                await store.mark_delivery(conn, event_id, **values)
        return len(rows)

    async def fan_out(self) -> None:
        """Give every new outbox event its delivery row, FAN_OUT_MAX per database
        transaction; stops when another process holds the cursor or nothing is left."""
        while True:
            async with self.engine.begin() as conn:
                more = await store.fan_out(conn, FAN_OUT_MAX)
            if not more:
                return

    async def _attempt(
        self, http: httpx.AsyncClient, key: SigningKey | None, row: Any
    ) -> dict[str, Any]:
        if key is None or not _wanted(row):
            return {"status": "skipped"}  # no subscription to this event when it was due
        body = msgspec.json.encode(
            {
                "event_id": row.event_id,
                "type": row.type,
                "created_at": row.created_at,
                "data": row.data,
            }
        )
        attempts = row.attempts + 1
        now = _wall_now()
        status_code, error = await _post(http, row.url, body, row.event_id, key)
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_attempt_at": now,
            "last_status": status_code,
            "last_error": error,
        }
        if error is None:
            return values | {"status": "delivered", "delivered_at": now}
        waited = self.backoff_s * (2 ** (attempts - 1) - 1)
        wait = self.backoff_s * 2 ** (attempts - 1)
        if waited + wait > self.window_s:
            return values | {"status": "failed"}
        return values | {"next_attempt_at": now + timedelta(seconds=wait)}


def _wanted(row: Any) -> bool:
    return row.url is not None and row.type in (row.events or [])


async def _post(
    http: httpx.AsyncClient, url: str, body: bytes, event_id: str, key: SigningKey
) -> tuple[int | None, str | None]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": event_id}
    headers |= sign_request(
        method="POST",
        url=url,
        headers=headers,
        body=body,
        key_id=key.key_id,
        private_key=key.private_key,
    )
    try:
        response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _subscription_view(row: Any) -> Webhook:
    return Webhook(url=row.url, events=list(row.events), updated_at=row.updated_at)


def _delivery_view(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        event_id=row.event_id,
        type=row.type,
        created_at=row.created_at,
        status=row.status,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        delivered_at=row.delivered_at,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else msgspec.UNSET,
    )
