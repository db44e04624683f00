"""The signature checks' database side, made cheap: cached keys, batched nonces.

Keys: each server process caches key records for `KEY_CACHE_TTL_S`. The registry
notifies (`NOTIFY exchange_keys`) in the same database transaction as any change to a
key or a partner's status, and every process listens and clears its cache when told,
so a revoked key or a suspended partner stops working at once everywhere. If the
listening connection is lost, the cache is bypassed until it is back (fail closed: the
database is always right).

Nonces: concurrent requests' (keyid, nonce) pairs are written together, one INSERT and
one commit for all that arrived while the previous write was running, exactly like
group commit for postings. A pair already present (or twice in one write) is a replay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.db import driver_connection, libpq_url
from exchange.logs import get_logger
from partners import store
from partners.signing import CREATED_PAST_S_MAX, KeyRecord

__all__ = ["KEYS_CHANNEL", "NONCE_KEEP", "SignatureGateway", "housekeeping_jobs"]

KEYS_CHANNEL = "exchange_keys"
KEY_CACHE_TTL_S = 60.0
# A nonce is stamped max(arrival, created); its request is refused as expired once
# created is 300 s old, so after 300 s (plus a margin for clock skew between servers)
# it can be forgotten.
NONCE_KEEP = timedelta(seconds=CREATED_PAST_S_MAX + 60)
_log = get_logger("partners.gateway")

_KEY_SQL = """
SELECT k.key_id, k.partner_id, k.public_key, k.status, p.status AS partner_status
FROM partner_keys AS k JOIN partners AS p ON p.partner_id = k.partner_id
WHERE k.key_id = $1
"""
# Duplicates in one write are removed before it; a pair already stored is skipped.
_NONCES_SQL = """
INSERT INTO signature_nonces (key_id, nonce, seen_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING key_id, nonce
"""


@dataclass
class _Pending:
    key_id: str
    nonce: str
    seen_at: datetime
    future: asyncio.Future[bool]


class SignatureGateway:
    """Key lookups and nonce recording for one server process."""

    def __init__(self, engine: AsyncEngine, database_url: str) -> None:
        self.engine = engine
        self.database_url = database_url
        self._keys: dict[str, tuple[float, KeyRecord | None]] = {}
        self._listener: asyncpg.Connection | None = None
        self._queue: deque[_Pending] = deque()
        self._writing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for key and partner changes; until this succeeds, nothing is cached."""
        try:
            self._listener = await asyncpg.connect(libpq_url(self.database_url))
            await self._listener.add_listener(KEYS_CHANNEL, self._on_notify)
            self._listener.add_termination_listener(self._on_lost)
        except (OSError, asyncpg.PostgresError) as exc:
            _log.warning("key_cache_disabled", error=str(exc))
            self._listener = None

    async def stop(self) -> None:
        while self._tasks or self._queue:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                self._start_write()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    def _on_notify(self, *_: Any) -> None:
        self._keys.clear()

    def _on_lost(self, *_: Any) -> None:
        _log.warning("key_cache_listener_lost")
        self._listener = None
        self._keys.clear()

    def forget_keys(self) -> None:
        """Drop every cached key (this process changed one)."""
        self._keys.clear()

    # -- keys --------------------------------------------------------------------------------

    async def resolve_key(self, key_id: str) -> KeyRecord | None:
        cached = self._keys.get(key_id)
        if cached is not None and self._listener is not None and time.monotonic() < cached[0]:
            return cached[1]
        async with driver_connection(self.engine) as conn:
            row = await conn.fetchrow(_KEY_SQL, key_id)
        record = None
        if row is not None:
            record = KeyRecord(
                key_id=row["key_id"],
                partner_id=row["partner_id"],
                public_key=bytes(row["public_key"]),
                key_active=row["status"] == "active",
                partner_active=row["partner_status"] == "active",
                partner_terminated=row["partner_status"] == "terminated",
            )
        if self._listener is not None:
            self._keys[key_id] = (time.monotonic() + KEY_CACHE_TTL_S, record)
        return record

    # -- nonces ------------------------------------------------------------------------------

    async def record_nonce(self, key_id: str, nonce: str, seen_at: datetime) -> bool:
        """Record a (keyid, nonce) pair; False when it was already used (a replay)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(key_id, nonce, seen_at, future))
        self._start_write()
        return await future

    def _start_write(self) -> None:
        if self._writing or not self._queue:
            return
        self._writing = True
        batch = list(self._queue)
        self._queue.clear()
        task = asyncio.create_task(self._write(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            first: dict[tuple[str, str], _Pending] = {}
            for item in batch:
                if (item.key_id, item.nonce) in first:
                    item.future.set_result(False)  # the same pair twice in one write
                else:
                    first[(item.key_id, item.nonce)] = item
            async with driver_connection(self.engine) as conn:
                rows = await conn.fetch(
                    _NONCES_SQL,
                    [item.key_id for item in first.values()],
                    [item.nonce for item in first.values()],
                    [item.seen_at for item in first.values()],
                )
            stored = {(row["key_id"], row["nonce"]) for row in rows}
            for pair, item in first.items():
                item.future.set_result(pair in stored)
        except BaseException as exc:  # fail closed: every waiting request fails
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._writing = False
            self._start_write()


def housekeeping_jobs(engine: AsyncEngine) -> list[Callable[[datetime], Awaitable[int]]]:
    """Scheduler jobs that keep the gateway's tables small: spent nonces, dead sessions."""

    async def purge_spent_nonces(now: datetime) -> int:
        async with engine.begin() as conn:
            return await store.purge_nonces(conn, now - NONCE_KEEP)

    async def purge_expired_sessions(now: datetime) -> int:
        async with engine.begin() as conn:
            return await store.purge_sessions(conn, now)

    return [purge_spent_nonces, purge_expired_sessions]
