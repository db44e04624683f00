"""What every command of the `exchange` command line shares: settings, the database, the
services. `exchange.cli`, `settlement.cli` and the tools import this; it imports none of
them, so the command modules never import each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import SystemClock
from exchange.config import ConfigError, Settings
from exchange.db import DatabaseUnavailable, OpenDatabase, create_engine, migrate, open_database
from exchange.embedded import EmbeddedPostgresError
from exchange.wiring import Services, build_services

__all__ = ["run_with_engine", "run_with_services", "settings_or_exit", "using_database"]

T = TypeVar("T")
# A command runs one job at a time: a small pool is plenty.
CLI_POOL_SIZE = 4


def settings_or_exit() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def using_database(settings: Settings, *, migrated: bool = True) -> Iterator[OpenDatabase]:
    """Open the configured or embedded database (migrated), or exit with a clear message."""
    try:
        database = open_database(settings)
    except (DatabaseUnavailable, EmbeddedPostgresError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if migrated:
            migrate(database.url)
        yield database
    finally:
        database.close()


def run_with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run one async job against the database, with a small pool, then dispose it."""
    with using_database(settings) as database:

        async def runner() -> T:
            engine = create_engine(database.url, pool_size=CLI_POOL_SIZE)
            try:
                return await work(engine)
            finally:
                await engine.dispose()

        return asyncio.run(runner())


def run_with_services(settings: Settings, work: Callable[[Services], Awaitable[T]]) -> T:
    """Run one async job with the services `build_services` wires, on the system clock
    (nothing is started: no scheduler, no key listener; the job calls services directly)."""

    async def with_services(engine: AsyncEngine) -> T:
        return await work(build_services(settings, engine, SystemClock()))

    return run_with_engine(settings, with_services)
