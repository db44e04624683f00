"""The partner store's failure paths: driver errors never leave it, and a database that
is away or not migrated yet is `DatabaseUnavailable`, never a crash or a driver error."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import create_engine
from exchange.embedded import EmbeddedPostgres
from exchange.errors import AlreadyExists, DatabaseUnavailable
from partners import registry, store
from partners.signing import generate_keypair
from partners.tables import partner_keys, partner_terms
from tests.support import add_partner

UNREACHABLE_URL = "postgresql://nobody@127.0.0.1:9/none"
# The Ed25519 identity point: a small-order key the strict decoder refuses.
IDENTITY_KEY = base64.urlsafe_b64decode("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


@pytest.fixture
async def unmigrated_engine(postgres: EmbeddedPostgres) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database: the server started before `exchange migrate`."""
    name = f"empty_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    engine = create_engine(postgres.url(name), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(postgres.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_the_start_up_key_check_is_skipped_without_a_schema(
    unmigrated_engine: AsyncEngine, clock: FrozenClock
) -> None:
    with pytest.raises(DatabaseUnavailable) as refused:
        await registry.revoke_unacceptable_keys(unmigrated_engine, clock)
    assert refused.value.reason == "ProgrammingError"
    await registry.check_stored_keys(unmigrated_engine, clock)  # logs, does not raise


async def test_the_start_up_key_check_is_skipped_without_a_database(clock: FrozenClock) -> None:
    engine = create_engine(UNREACHABLE_URL, pool_size=1)
    try:
        await registry.check_stored_keys(engine, clock)  # logs, does not raise
    finally:
        await engine.dispose()


async def test_the_start_up_key_check_revokes_only_unacceptable_keys(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    _, good = generate_keypair()
    kept = await registry.add_key(engine, clock, "grocer", good)
    async with engine.begin() as conn:
        await store.insert_key(
            conn, key_id="key_identity", partner_id="grocer", public_key=IDENTITY_KEY,
            now=clock.now(),
        )  # fmt: skip
    assert await registry.revoke_unacceptable_keys(engine, clock) == ["key_identity"]
    assert await registry.revoke_unacceptable_keys(engine, clock) == []
    record = await registry.get_partner(engine, "grocer")
    assert {key.key_id: key.status for key in record.keys} == {
        kept.key_id: "active",
        "key_identity": "revoked",
    }


async def test_a_second_partner_with_the_same_id_is_refused_and_changes_nothing(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer", issue_price="0.012")
    with pytest.raises(AlreadyExists):
        await add_partner(engine, clock, "grocer", issue_price="0.5")
    record = await registry.get_partner(engine, "grocer")
    assert str(record.issue_price.normalize()) == "0.012"
    async with engine.connect() as conn:
        versions = await conn.scalar(
            select(func.count()).where(partner_terms.c.partner_id == "grocer")
        )
        keys = await conn.scalar(select(func.count()).select_from(partner_keys))
    assert (versions, keys) == (1, 0)


async def test_listening_without_a_database_is_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable) as refused:
        await store.listen(UNREACHABLE_URL, store.KEYS_CHANNEL, lambda: None, lambda _: None)
    assert refused.value.reason in {"ConnectionRefusedError", "OSError", "TimeoutError"}


async def test_a_listener_hears_a_key_change(
    engine: AsyncEngine, database_url: str, clock: FrozenClock
) -> None:
    heard: list[str] = []
    listener = await store.listen(
        database_url, store.KEYS_CHANNEL, lambda: heard.append("notify"), lambda _: None
    )
    try:
        await add_partner(engine, clock, "grocer")
        _, public_key = generate_keypair()
        await registry.add_key(engine, clock, "grocer", public_key)
        for _ in range(500):
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == ["notify"]
        assert not listener.is_closed()
    finally:
        await listener.close()
    assert listener.is_closed()
