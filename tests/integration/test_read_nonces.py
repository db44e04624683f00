"""Reads' nonces: committed without waiting for the WAL flush, for that write alone.

The asynchronous commit is a setting of the nonce write's own database transaction: the
pooled connection it ran on must go back to durable commits, or the next posting on it
would be acknowledged before it is on disk.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.db import sqlalchemy_url
from partners.gateway import SignatureGateway

NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)


async def test_a_read_nonce_is_stored_once_and_leaves_its_connection_durable(
    database_url: str,
) -> None:
    # One connection, so every write runs on it; durable by its own setting, as in
    # production (the test cluster itself runs without synchronous commits, for speed).
    engine = create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=1,
        max_overflow=0,
        connect_args={"server_settings": {"synchronous_commit": "on"}},
    )
    gateway = SignatureGateway(engine, database_url)
    try:
        results = await asyncio.gather(
            *(
                gateway.record_nonce("key_r", "read-nonce-000001", NOW, durable=False)
                for _ in range(5)
            ),
            gateway.record_nonce("key_r", "read-nonce-000002", NOW, durable=False),
        )
        assert results[:5].count(True) == 1
        assert results[5] is True
        # A read's nonce and a posting's share one table: a durable use is a replay too.
        assert await gateway.record_nonce("key_r", "read-nonce-000001", NOW) is False
        assert await gateway.record_nonce("key_r", "read-nonce-000003", NOW) is True
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW synchronous_commit")) == "on"
            stored = await conn.scalar(
                text("SELECT count(*) FROM signature_nonces WHERE key_id = 'key_r'")
            )
        assert stored == 3
    finally:
        await gateway.stop()
        await engine.dispose()
