"""Test fixtures: one real embedded PostgreSQL per test session, one database per test.

The session migrates a template database once; every test that needs the database gets
its own copy (`CREATE DATABASE ... TEMPLATE`, a file copy taking a few milliseconds), so
tests are isolated without mocks and without transactions rolled back behind their back.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.app import create_app
from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine, migrate
from exchange.embedded import EmbeddedPostgres
from exchange.service import LedgerService

pytest_plugins = ["tests.watchdog"]

TEMPLATE = "exchange_template"
PUBLIC_URL = "https://exchange.test"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL server, with a migrated template database."""
    data_dir = Path(os.environ.get("EXCHANGE_TEST_DATA_DIR") or tmp_path_factory.mktemp("pg"))
    server = EmbeddedPostgres(data_dir, durable=False, database=TEMPLATE)
    server.start()
    migrate(server.url(TEMPLATE))
    # The template must have no connections while it is copied.
    server.psql(f"ALTER DATABASE {TEMPLATE} WITH ALLOW_CONNECTIONS false", "postgres")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, fully migrated database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE} STRATEGY FILE_COPY')
    finally:
        await admin.close()
    yield postgres.url(name)
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    the_engine = create_engine(database_url, pool_size=20)
    try:
        yield the_engine
    finally:
        await the_engine.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))


@pytest.fixture
def ledger(engine: AsyncEngine, clock: FrozenClock) -> LedgerService:
    return LedgerService(engine, clock, points_ttl=timedelta(days=1095))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        public_url=PUBLIC_URL,
        scheduler_enabled=False,
        log_level="WARNING",
    )


@pytest.fixture
def app(settings: Settings, clock: FrozenClock) -> Litestar:
    return create_app(settings, clock=clock)


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan in one task of its own (start-up before, shutdown after),
    as a server would; anyio needs its cancel scopes entered and left by the same task."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"app failed to start: {started}")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        # If the lifespan task ended early, its error is raised here rather than waited on.
        replied = asyncio.ensure_future(outbox.get())
        await asyncio.wait({replied, task}, return_when=asyncio.FIRST_COMPLETED)
        replied.cancel()
        await task


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app, in-process, on the test's own event loop (so the app's
    engine and every client share one loop). The app's lifespan runs around the test."""
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
            yield http
