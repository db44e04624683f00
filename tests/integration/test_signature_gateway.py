"""Cached keys must never outlive a revocation; batched nonces must never admit a replay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.errors import ServiceUnavailable
from partners import registry
from partners.gateway import (
    KEY_DIRECTORY_MISSES_PER_S,
    NONCE_KEEP,
    SignatureGateway,
    housekeeping_jobs,
)
from partners.signing import KeyRecord, generate_keypair
from tests.support import add_partner


async def _eventually_revoked(gateway: SignatureGateway, key_id: str) -> bool:
    for _ in range(100):
        record = await gateway.resolve_key(key_id)
        if record is not None and not record.key_active:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_revocation_elsewhere_reaches_the_cache_by_notify(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, public_key = generate_keypair()
    key = await registry.add_key(engine, clock, "grocer", public_key)
    gateway = SignatureGateway(engine, database_url)
    await gateway.start()
    try:
        first = await gateway.resolve_key(key.key_id)
        assert first is not None
        assert first.key_active
        # Another process revokes it: this gateway is not told directly, only by NOTIFY.
        await registry.revoke_key(engine, clock, "grocer", key.key_id)
        assert await _eventually_revoked(gateway, key.key_id)
        await registry.update_partner(
            engine, clock, "grocer", registry.PartnerChanges(status="suspended")
        )
        for _ in range(100):
            record = await gateway.resolve_key(key.key_id)
            if record is not None and not record.partner_active:
                break
            await asyncio.sleep(0.01)
        assert record is not None
        assert not record.partner_active
    finally:
        await gateway.stop()


async def test_without_a_listener_nothing_is_cached(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, public_key = generate_keypair()
    key = await registry.add_key(engine, clock, "grocer", public_key)
    gateway = SignatureGateway(engine, "postgresql://nobody@127.0.0.1:9/none")
    await gateway.start()  # cannot listen: the cache stays off
    try:
        assert (await gateway.resolve_key(key.key_id)) is not None
        await registry.revoke_key(engine, clock, "grocer", key.key_id)
        record = await gateway.resolve_key(key.key_id)
        assert record is not None
        assert not record.key_active, "a revocation is seen at once when nothing is cached"
    finally:
        await gateway.stop()


async def test_racing_uses_of_one_nonce_admit_exactly_one(
    engine: AsyncEngine, database_url: str
) -> None:
    gateway = SignatureGateway(engine, database_url)
    now = datetime(2026, 11, 23, 10, tzinfo=UTC)
    results = await asyncio.gather(
        *(gateway.record_nonce("key_1", "same-nonce-0001", now) for _ in range(20)),
        *(gateway.record_nonce("key_1", f"other-nonce-{i:04d}", now) for i in range(20)),
    )
    assert results[:20].count(True) == 1
    assert all(results[20:])
    assert await gateway.record_nonce("key_1", "same-nonce-0001", now) is False
    await gateway.stop()


async def test_a_request_that_gives_up_does_not_fail_its_neighbours_write(
    engine: AsyncEngine, database_url: str
) -> None:
    """A request cancelled while its nonce waits (its client went away, a server stopping)
    shares a write with others: they get their answers, and the gateway still stops."""
    gateway = SignatureGateway(engine, database_url)
    now = datetime(2026, 11, 23, 10, tzinfo=UTC)
    first = asyncio.create_task(gateway.record_nonce("key_1", "nonce-first-0001", now))
    gone = asyncio.create_task(gateway.record_nonce("key_1", "nonce-gone-00001", now))
    again = asyncio.create_task(gateway.record_nonce("key_1", "nonce-gone-00001", now))
    other = asyncio.create_task(gateway.record_nonce("key_1", "nonce-other-0001", now))
    await asyncio.sleep(0)  # all four queued: the first writes alone, the rest wait together
    gone.cancel()
    assert await first is True
    # The same nonce twice in one write: the one still waiting is told it was used.
    assert await again is False
    assert await other is True
    assert gone.cancelled()
    await asyncio.wait_for(gateway.stop(), 10)


@pytest.mark.parametrize("started", [True, False])
async def test_a_nonce_write_cut_short_refuses_its_requests_and_frees_the_writer(
    engine: AsyncEngine, database_url: str, started: bool
) -> None:
    """At the event loop's end a write task is cancelled, possibly before its first step:
    its requests are refused 503 (fail closed), never left waiting, and the next nonce
    is written."""
    gateway = SignatureGateway(engine, database_url)
    now = datetime(2026, 11, 23, 10, tzinfo=UTC)
    waiting = asyncio.create_task(gateway.record_nonce("key_1", "nonce-cut-000001", now))
    for _ in range(1 if not started else 3):
        await asyncio.sleep(0)
    (write,) = gateway._tasks
    write.cancel()
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiting, 10)  # before: waited for ever
    assert await asyncio.wait_for(gateway.record_nonce("key_1", "nonce-next-00001", now), 10)
    await asyncio.wait_for(gateway.stop(), 10)


async def test_housekeeping_forgets_spent_nonces_and_expired_sessions(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    gateway = SignatureGateway(engine, database_url)
    old = clock.now() - NONCE_KEEP - timedelta(seconds=1)
    assert await gateway.record_nonce("key_1", "old-nonce-000001", old)
    assert await gateway.record_nonce("key_1", "new-nonce-000001", clock.now())
    await gateway.stop()
    purge_nonces, purge_sessions = housekeeping_jobs(engine)
    assert await purge_nonces(clock.now()) == 1
    assert await purge_sessions(clock.now()) == 0
    async with engine.connect() as conn:
        left = await conn.scalar(text("SELECT string_agg(nonce, ',') FROM signature_nonces"))
    assert left == "new-nonce-000001"


class _PausedGateway(SignatureGateway):
    """A gateway whose key reads can be held after they have read the database: the
    window in which a slow lookup races a revocation."""

    def __init__(self, engine: AsyncEngine, database_url: str) -> None:
        super().__init__(engine, database_url)
        self.hold = False
        self.reads = 0
        self.read_done = asyncio.Event()
        self.resume = asyncio.Event()

    async def _fetch_key(self, key_id: str) -> KeyRecord | None:
        record = await super()._fetch_key(key_id)
        self.reads += 1
        if self.hold:
            self.read_done.set()
            await self.resume.wait()
        return record


async def _until(check: Callable[[], bool], timeout_s: float = 10) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def test_a_lookup_that_read_before_a_revocation_cannot_cache_the_old_key(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, public_key = generate_keypair()
    key = await registry.add_key(engine, clock, "grocer", public_key)
    gateway = _PausedGateway(engine, database_url)
    await gateway.start()
    try:
        assert gateway.listening
        gateway.hold = True
        lookup = asyncio.create_task(gateway.resolve_key(key.key_id))
        await asyncio.wait_for(gateway.read_done.wait(), 10)  # it has read: key active
        generation = gateway.keys.generation
        await registry.revoke_key(engine, clock, "grocer", key.key_id)  # "another process"
        assert await _until(lambda: gateway.keys.generation != generation), "NOTIFY arrived"
        gateway.hold = False
        gateway.resume.set()
        late = await asyncio.wait_for(lookup, 10)
        assert late is not None
        assert late.key_active, "the slow lookup answers what it read, before the revocation"
        record = await gateway.resolve_key(key.key_id)
        assert record is not None
        assert not record.key_active, "but it must not have cached that stale answer"
    finally:
        gateway.resume.set()
        await gateway.stop()


async def test_a_flood_of_unknown_key_ids_is_cheap_and_caches_nothing(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, public_key = generate_keypair()
    key = await registry.add_key(engine, clock, "grocer", public_key)
    gateway = _PausedGateway(engine, database_url)
    await gateway.start()
    try:
        assert gateway.listening
        flood = [f"key_{index:024x}" for index in range(2000)]
        assert await asyncio.gather(*(gateway.resolve_key(k) for k in flood)) == [None] * 2000
        # The directory of key ids answers them; only a small budget reaches the database.
        assert gateway.reads <= KEY_DIRECTORY_MISSES_PER_S + 5
        assert len(gateway.keys) == 0, "unknown key ids are never stored one by one"
        known = await gateway.resolve_key(key.key_id)
        assert known is not None
        assert known.key_active
        # A key created elsewhere is found once its NOTIFY has arrived.
        _, other_public = generate_keypair()
        generation = gateway.keys.generation
        other = await registry.add_key(engine, clock, "grocer", other_public)
        assert await _until(lambda: gateway.keys.generation != generation)
        assert await gateway.resolve_key(other.key_id) is not None
    finally:
        await gateway.stop()


async def test_a_lost_listener_bypasses_the_cache_and_reconnects(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, public_key = generate_keypair()
    key = await registry.add_key(engine, clock, "grocer", public_key)
    gateway = SignatureGateway(engine, database_url)
    await gateway.start()
    try:
        assert gateway.listening
        assert await gateway.resolve_key(key.key_id) is not None
        assert len(gateway.keys) == 1
        async with engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        assert killed == 1
        # The connection reads as closed a moment before its termination callback runs;
        # what matters is that the cached key is dropped once the loss is noticed.
        assert await _until(lambda: not gateway.listening or not gateway.keys.enabled)
        assert await _until(lambda: len(gateway.keys) == 0), "the cache was dropped"
        assert await _until(lambda: gateway.listening, 10), "the listener came back"
        assert gateway.keys.enabled
        await registry.revoke_key(engine, clock, "grocer", key.key_id)
        assert await _eventually_revoked(gateway, key.key_id)
    finally:
        await gateway.stop()
