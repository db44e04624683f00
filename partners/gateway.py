"""The signature checks' database side, made cheap: cached keys, batched nonces.

Keys: each server process caches key records (`partners.keycache`: bounded, expiring,
generation-checked). The registry notifies (`NOTIFY exchange_keys`) in the same database
transaction as any change to a key or a partner's status, and every process listens and
invalidates its cache when told, so a revoked key or a suspended partner stops working
at once everywhere. If the listening connection is lost (PostgreSQL restarted, the
backend was terminated), the cache is bypassed (fail closed: the database is always
right) and the listener reconnects in the background with capped exponential backoff.

Nonces: concurrent requests' (keyid, nonce) pairs are written together, one INSERT and
one commit for all that arrived while the previous write was running, exactly like
group commit for postings. A pair already present (or twice in one write) is a replay.
Reads' nonces (`durable=False`) are written by their own writer, in database transactions
with `synchronous_commit = off` (for that transaction only): they wait for PostgreSQL to
accept the row, not for the WAL flush (docs/ledger.md: what a crash can forget, and why
that is harmless for a read).
Posting requests' nonces are not written here at all: the ledger writes them in the
posting's own database transaction (`exchange.service.NonceClaim`).

Any database failure here is `DatabaseUnavailable` (the partner store translates it):
the request is refused with 503, never admitted. The SQL, and the listening connection,
are `partners.store`'s; this module holds the caches, queues and tasks around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.errors import DatabaseUnavailable, ServiceUnavailable
from exchange.logs import get_logger
from partners import store
from partners.keycache import KeyCache
from partners.signing import CREATED_PAST_S_MAX, KeyRecord
from partners.store import KEYS_CHANNEL, KeyListener

__all__ = ["KEYS_CHANNEL", "NONCE_KEEP", "SignatureGateway", "housekeeping_jobs"]

KEY_CACHE_TTL_S = 60.0
KEY_CACHE_KNOWN_MAX = 10_000
KEY_DIRECTORY_MAX = 100_000
KEY_DIRECTORY_MISSES_PER_S = 20.0
LISTEN_BACKOFF_S_MIN = 0.1
LISTEN_BACKOFF_S_MAX = 5.0
# How often a healthy listener is checked even without a termination callback.
LISTEN_CHECK_S = 5.0
# A nonce is stamped max(arrival, created); its request is refused as expired once
# created is 300 s old, so after 300 s (plus a margin for clock skew between servers)
# it can be forgotten.
NONCE_KEEP = timedelta(seconds=CREATED_PAST_S_MAX + 60)
_log = get_logger("partners.gateway")
_CUT_SHORT = "The server stopped before this request's nonce was recorded; retry."


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
        self.keys = KeyCache(
            ttl_s=KEY_CACHE_TTL_S,
            known_max=KEY_CACHE_KNOWN_MAX,
            directory_max=KEY_DIRECTORY_MAX,
            misses_per_s=KEY_DIRECTORY_MISSES_PER_S,
        )
        self._listener: KeyListener | None = None
        self._listener_lost = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None
        # One database read per (key id, cache generation) at a time, shared by everyone
        # asking meanwhile; a different generation never shares a read from before it.
        self._reads: dict[tuple[str, int], asyncio.Task[KeyRecord | None]] = {}
        self._directory_reads: dict[int, asyncio.Task[None]] = {}
        # One queue and one writer per durability: index True (durable) and False (reads).
        self._queues: dict[bool, deque[_Pending]] = {True: deque(), False: deque()}
        self._writing: dict[bool, bool] = {True: False, False: False}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for key and partner changes (one attempt now, then in the background
        until it works); until a listener is in place, nothing is cached."""
        if not await self._listen():
            _log.warning("key_cache_disabled", reason="cannot listen; retrying in background")
        self._listening = asyncio.create_task(self._keep_listening(), name="key-cache-listener")

    async def stop(self) -> None:
        task, self._listening = self._listening, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._tasks or any(self._queues.values()):
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                self._start_write(True)
                self._start_write(False)
        for read in list(self._reads.values()) + list(self._directory_reads.values()):
            read.cancel()  # reads whose callers all gave up
        listener, self._listener = self._listener, None
        self.keys.disable()
        if listener is not None:
            await listener.close()

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    async def _listen(self) -> bool:
        """Open the listening connection; True when it is in place."""
        try:
            self._listener = await store.listen(
                self.database_url, KEYS_CHANNEL, self._on_notify, self._on_lost
            )
        except DatabaseUnavailable as exc:
            _log.debug("key_cache_listen_failed", error=exc.reason)
            return False
        self._listener_lost.clear()
        self.keys.enable()  # changes missed while we were not listening: start afresh
        return True

    async def _keep_listening(self) -> None:
        """Reconnect a lost listener with capped, jittered exponential backoff."""
        backoff_s = LISTEN_BACKOFF_S_MIN
        while True:  # for the life of the process; stop() cancels it
            if self.listening:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._listener_lost.wait(), LISTEN_CHECK_S)
                if self.listening:
                    continue
                self._on_lost()
            await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
            if await self._listen():
                _log.info("key_cache_listening_again")
                backoff_s = LISTEN_BACKOFF_S_MIN
            else:
                backoff_s = min(backoff_s * 2, LISTEN_BACKOFF_S_MAX)

    def _on_notify(self) -> None:
        self.keys.invalidate()

    def _on_lost(self, listener: KeyListener | None = None) -> None:
        """The listener is gone (its termination callback, or found closed)."""
        if listener is not None and listener is not self._listener:
            return  # a late callback from a listener already replaced: not ours to drop
        if self._listener is not None:
            _log.warning("key_cache_listener_lost")
        self._listener = None
        self.keys.disable()
        self._listener_lost.set()

    def forget_keys(self) -> None:
        """Drop every cached key (this process changed one)."""
        self.keys.invalidate()

    # -- keys --------------------------------------------------------------------------------

    async def resolve_key(self, key_id: str) -> KeyRecord | None:
        if self.keys.needs_directory():
            await self._load_directory()
        cached = self.keys.get(key_id)
        if cached.found:
            return cached.record
        read = (key_id, self.keys.generation)
        task = self._reads.get(read)
        if task is None:
            # A task of its own, so that a caller who gives up does not cancel the read
            # for the others sharing it.
            task = asyncio.create_task(self._fetch_key(key_id))
            self._reads[read] = task
            task.add_done_callback(lambda done: self._key_read(read, done))
        return await asyncio.shield(task)

    def _key_read(self, read: tuple[str, int], task: asyncio.Task[KeyRecord | None]) -> None:
        self._reads.pop(read, None)
        if not task.cancelled() and task.exception() is None:
            # Stored only if no invalidation happened since the read began (generation).
            self.keys.put(read[0], task.result(), read[1])

    async def _fetch_key(self, key_id: str) -> KeyRecord | None:
        return await store.fetch_key(self.engine, key_id)

    async def _load_directory(self) -> None:
        """Read every key id once per generation (shared by concurrent callers)."""
        generation = self.keys.generation
        task = self._directory_reads.get(generation)
        if task is None:
            task = asyncio.create_task(self._fetch_directory(generation))
            self._directory_reads[generation] = task
            task.add_done_callback(lambda _: self._directory_reads.pop(generation, None))
        await asyncio.shield(task)

    async def _fetch_directory(self, generation: int) -> None:
        key_ids = await store.fetch_key_ids(self.engine, KEY_DIRECTORY_MAX + 1)
        self.keys.put_directory(key_ids, generation)

    # -- nonces ------------------------------------------------------------------------------

    async def record_nonce(
        self, key_id: str, nonce: str, seen_at: datetime, *, durable: bool = True
    ) -> bool:
        """Record a (keyid, nonce) pair; False when it was already used (a replay).

        `durable=False` (reads only): answered once PostgreSQL holds the row, before its
        commit is flushed to disk."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queues[durable].append(_Pending(key_id, nonce, seen_at, future))
        self._start_write(durable)
        return await future

    def _start_write(self, durable: bool) -> None:
        queue = self._queues[durable]
        if self._writing[durable] or not queue:
            return
        self._writing[durable] = True
        batch = list(queue)
        queue.clear()
        task = asyncio.create_task(self._write(batch, durable))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._written(done, batch, durable))

    def _written(self, task: asyncio.Task[None], batch: list[_Pending], durable: bool) -> None:
        """In a done-callback, so it runs even for a write cancelled before its first step
        (at event-loop teardown): the writer is free again and no request is left waiting
        (fail closed: one whose nonce was not answered is refused)."""
        self._tasks.discard(task)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable(_CUT_SHORT))
        self._writing[durable] = False
        self._start_write(durable)

    async def _write(self, batch: list[_Pending], durable: bool) -> None:
        try:
            first: dict[tuple[str, str], _Pending] = {}
            for item in batch:
                if (item.key_id, item.nonce) in first:
                    _answer(item.future, False)  # the same pair twice in one write
                else:
                    first[(item.key_id, item.nonce)] = item
            stored = await store.insert_nonces(
                self.engine,
                list(first),
                [item.seen_at for item in first.values()],
                durable=durable,
            )
            for pair, item in first.items():
                _answer(item.future, pair in stored)
        except Exception as exc:  # fail closed: every waiting request fails
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)


def _answer(future: asyncio.Future[bool], value: bool) -> None:
    """Answer a waiting request, unless it gave up (cancelled: its client went away or
    the server is stopping); its nonce is still written, as a spent nonce must be."""
    if not future.done():
        future.set_result(value)


def housekeeping_jobs(engine: AsyncEngine) -> list[Callable[[datetime], Awaitable[int]]]:
    """Scheduler jobs that keep the gateway's tables small: spent nonces, dead sessions."""

    async def purge_spent_nonces(now: datetime) -> int:
        async with engine.begin() as conn:
            return await store.purge_nonces(conn, now - NONCE_KEEP)

    async def purge_expired_sessions(now: datetime) -> int:
        async with engine.begin() as conn:
            return await store.purge_sessions(conn, now)

    return [purge_spent_nonces, purge_expired_sessions]
