"""Database access: the async engine, migrations, and where the database comes from.

`open_database()` is the one place that decides which PostgreSQL the exchange talks to:
EXCHANGE_DATABASE_URL when set, else the embedded server in EXCHANGE_DATA_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exchange.config import Settings
from exchange.embedded import EmbeddedPostgres
from exchange.errors import DatabaseUnavailable
from exchange.store._errors import is_connection_lost, is_unavailable, unavailable_as_503

__all__ = [
    "DatabaseUnavailable",
    "OpenDatabase",
    "Readiness",
    "alembic_config",
    "check_reachable",
    "create_engine",
    "current_revision",
    "data_exception_state",
    "driver_connection",
    "escaped_as_unavailable",
    "head_revision",
    "migrate",
    "open_database",
    "pool_capacity",
    "readiness",
    "recreate_database",
    "sqlalchemy_url",
    "watch_pool",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S_DEFAULT = 10  # as EXCHANGE_DB_LOCK_TIMEOUT_S's default


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` → `postgresql+asyncpg://...` (other parts unchanged)."""
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def libpq_url(url: str) -> str:
    """The inverse of `sqlalchemy_url`: a URL asyncpg and psql understand."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    pool_timeout_s: int = 10,
    lock_timeout_s: int = LOCK_TIMEOUT_S_DEFAULT,
) -> AsyncEngine:
    """A bounded pool: `pool_size` connections and no overflow, so load cannot exhaust
    PostgreSQL's max_connections however many requests arrive.

    Self-healing (docs/operations.md, "What the exchange does when PostgreSQL goes away"):
    a connection asyncpg already knows is closed (the server restarted, or killed it) is
    replaced at checkout, for free; one that fails in use is invalidated (SQLAlchemy
    paths: the `handle_error` hook; driver paths: `driver_connection`). A connection
    attempt waits at most the pool timeout, so a request never waits longer than that
    for a database that is not there. No `pool_pre_ping`: it would cost a round trip per
    checkout on the hot path, and the checkout check below catches the common case.

    No wait for a lock is unbounded: a statement that waits longer than `lock_timeout_s`
    for a row another session holds (a session stuck idle in a transaction, an operator's
    open psql) fails with SQLSTATE 55P03, which the store answers as 503, retry later.
    Without it, one stuck session would hang every request that touches its rows, and the
    group-commit batches holding them.
    """
    engine = create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=False,
        pool_recycle=3600,
        connect_args={
            "timeout": min(CONNECT_TIMEOUT_S, pool_timeout_s),
            "server_settings": {"timezone": "UTC", "lock_timeout": f"{lock_timeout_s * 1000}"},
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed_connection)
    event.listen(engine.sync_engine, "handle_error", _invalidate_lost_connections)
    return engine


def _refuse_closed_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection whose socket asyncpg saw close (restart, pg_terminate_backend)
    is thrown away and reconnected before anyone uses it; the pool retries the checkout."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("connection closed by the server while idle in the pool")


def _invalidate_lost_connections(context: ExceptionContext) -> None:
    """Errors the dialect does not recognise as a disconnect ("cannot switch to state",
    terminated backends) still mean the connection is gone: SQLAlchemy then invalidates
    it and every connection made before it (the server most likely restarted)."""
    if not context.is_disconnect and is_connection_lost(context.original_exception):
        context.is_disconnect = True


# -- the pool, watched (exchange.metrics keeps its gauges from these) ----------------------------


def pool_capacity(engine: AsyncEngine) -> int | None:
    """How many connections the engine's pool holds at most (None: a pool without a size)."""
    size = getattr(engine.sync_engine.pool, "size", None)
    return size() if callable(size) else None


def watch_pool(
    engine: AsyncEngine, *, checked_out: Callable[[], None], checked_in: Callable[[], None]
) -> None:
    """Call `checked_out` on every checkout of a pooled connection, `checked_in` on every
    return; registered after `create_engine`'s own checkout check, so a connection that
    check throws away is not counted."""
    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *_: checked_out())
    event.listen(pool, "checkin", lambda *_: checked_in())


# -- driver errors that escaped a store (exchange.problems answers them) -----------------------


def escaped_as_unavailable(exc: BaseException) -> bool:
    """A database error that reached the HTTP layer untranslated means "the database is
    away" (503): the pool timed out, the connection failed or was invalidated, or
    `is_unavailable` says so."""
    if isinstance(exc, PoolTimeout | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return is_unavailable(exc)


def data_exception_state(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error of class 22 (data exception: a NUL byte, an
    out-of-range date or number), the request's value PostgreSQL cannot hold; else None."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(
        getattr(orig, "__cause__", None), "sqlstate", None
    )
    return state if isinstance(state, str) and state.startswith("22") else None


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under one pooled connection, for the hot path.

    The pool stays SQLAlchemy's (one bound on connections for everything); the caller
    manages its own transaction on the driver. A block that leaves a transaction open
    (cancelled mid-rollback) or whose connection was lost gets its connection invalidated
    rather than reused. An unreachable database is `DatabaseUnavailable` (503).
    """
    with unavailable_as_503():
        async with engine.connect() as conn:
            fairy = await conn.get_raw_connection()
            driver = fairy.driver_connection
            if not isinstance(driver, asyncpg.Connection):
                raise TypeError(f"expected an asyncpg connection, got {type(driver).__name__}")
            lost = False
            try:
                yield driver
            except BaseException as exc:
                lost = is_connection_lost(exc)
                raise
            finally:
                if lost or driver.is_closed() or driver.is_in_transaction():
                    # Discarding a dead connection must not mask why the block failed.
                    with contextlib.suppress(Exception):
                        await conn.invalidate()


async def check_reachable(url: str) -> None:
    """Connect once; raise DatabaseUnavailable with a readable reason if we cannot."""
    redacted = _redact(url)
    try:
        connection = await asyncpg.connect(libpq_url(url), timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"cannot connect to {redacted}: {exc}") from None
    await connection.close()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


async def recreate_database(url: str, name: str) -> str:
    """Drop and create database `name` on the server behind `url`; return its URL."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain database name: {name!r}")
    connection = await asyncpg.connect(libpq_url(url), timeout=CONNECT_TIMEOUT_S)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = sqlalchemy_url(url)
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (synchronous; runs its own event loop)."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()


@dataclass(frozen=True)
class Readiness:
    revision: str | None
    read_only: bool


async def readiness(engine: AsyncEngine) -> Readiness:
    """One cheap round trip: the schema revision, and whether the database takes writes.
    A database that is away raises `DatabaseUnavailable` (within the pool timeout)."""
    with unavailable_as_503():
        async with engine.connect() as connection:
            read_only = await connection.scalar(
                text("SELECT current_setting('transaction_read_only') = 'on'")
            )
            exists = await connection.scalar(text("SELECT to_regclass('alembic_version')"))
            revision = None
            if exists is not None:
                revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    return Readiness(revision, bool(read_only))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        exists = await connection.scalar(text("SELECT to_regclass('alembic_version')"))
        if exists is None:
            return None
        version: str | None = await connection.scalar(
            text("SELECT version_num FROM alembic_version")
        )
        return version


@dataclass
class OpenDatabase:
    """A database URL, and the embedded server behind it when we started one."""

    url: str
    embedded: EmbeddedPostgres | None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def open_database(settings: Settings) -> OpenDatabase:
    """Resolve the database for this process: the configured URL (checked reachable),
    or the embedded server in the data folder (started or joined)."""
    if settings.database_url:
        asyncio.run(check_reachable(settings.database_url))
        return OpenDatabase(settings.database_url, None)
    embedded = EmbeddedPostgres(settings.data_dir)
    return OpenDatabase(embedded.start(), embedded)
