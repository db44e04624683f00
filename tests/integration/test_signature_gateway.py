"""Cached keys must never outlive a revocation; batched nonces must never admit a replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from partners import registry
from partners.gateway import NONCE_KEEP, SignatureGateway, housekeeping_jobs
from partners.signing import generate_keypair
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
