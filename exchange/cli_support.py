"""What every command of the `exchange` command line shares: settings, the database, the
services. `exchange.cli`, `settlement.cli` and the tools import this; it imports none of
them, so the command modules never import each other."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import SystemClock
from exchange.config import ConfigError, Settings
from exchange.db import DatabaseUnavailable, OpenDatabase, create_engine, migrate, open_database
from exchange.embedded import EmbeddedPostgresError
from exchange.wiring import Services, build_services

__all__ = [
    "LazyCommand",
    "LazyGroup",
    "run_with_engine",
    "run_with_services",
    "settings_or_exit",
    "using_database",
]

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


@dataclass(frozen=True)
class LazyCommand:
    """A command whose module is imported only when it runs (or shows its own help)."""

    target: str  # "package.module:attribute"
    summary: str  # the line `exchange --help` shows, so listing commands imports nothing
    extra: str  # the optional dependencies it needs: pip install 'coalition-exchange[extra]'


class LazyGroup(click.Group):
    """A click group that also lists commands loaded on first use: the tools (`bench`,
    `demo`) and their dependencies stay out of every other command and of the server."""

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        spec = self.lazy[cmd_name]
        module_name, _, attribute = spec.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] in {"exchange", "partners", "settlement"}:
                raise  # our own module is missing: a broken install, not a missing extra
            return _missing_extra(cmd_name, spec, exc.name)
        command: click.Command = getattr(module, attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            if name in self.lazy:
                rows.append((name, self.lazy[name].summary))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _missing_extra(name: str, spec: LazyCommand, missing: str) -> click.Command:
    def refuse(**_: Any) -> None:
        raise click.ClickException(
            f"`exchange {name}` needs the optional '{spec.extra}' dependencies "
            f"(module {missing!r} is not installed): "
            f"pip install 'coalition-exchange[{spec.extra}]'"
        )

    return click.Command(
        name,
        callback=refuse,
        help=f"{spec.summary} (needs: pip install 'coalition-exchange[{spec.extra}]')",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
