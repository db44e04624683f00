"""The `exchange` command line: serve, migrate, operator tokens (and more, per package)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from exchange.cli_support import (
    LazyCommand,
    LazyGroup,
    run_with_engine,
    run_with_services,
    settings_or_exit,
    using_database,
)
from exchange.config import ConfigError
from exchange.db import migrate
from exchange.logs import configure_logging
from exchange.operators import create_operator_token, list_operator_tokens, revoke_operator_token
from exchange.wiring import Services
from partners.webhooks.keyring import development_secret_file
from settlement.cli import report, settle

__all__ = ["main"]

console = Console()
T = TypeVar("T")


# The tools: imported only when run, never by the server (their extra: `[tools]`).
TOOLS = {
    "bench": LazyCommand(
        "exchange.tools.bench.cli:bench",
        "Benchmark the exchange end to end against pgbench, or a settlement run.",
        extra="tools",
    ),
    "demo": LazyCommand(
        "exchange.tools.demo_cli:demo_command",
        "A simulated week of trading through the signed API, then settlement.",
        extra="tools",
    ),
}


@click.group(cls=LazyGroup, lazy=TOOLS)
@click.version_option(package_name="coalition-exchange")
def main() -> None:
    """The coalition points exchange."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes (each with its own database pool).",
)
@click.option(
    "--server",
    "http_server",
    default="uvicorn",
    show_default=True,
    type=click.Choice(["uvicorn", "granian"]),
    help="The HTTP server around the same app (measured against each other in "
    "docs/performance.md, 'granian against uvicorn').",
)
def serve(host: str, port: int, workers: int, http_server: str) -> None:
    """Start the API (and the embedded PostgreSQL when EXCHANGE_DATABASE_URL is unset)."""
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)

    # uvicorn re-raises SIGTERM once it has shut down; make that a normal exit so the
    # embedded PostgreSQL is left (and stopped if we were its last user) on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with using_database(settings) as database, _metrics_folder(settings.data_dir, workers):
        # Worker processes read their settings from the environment: hand them the URL.
        os.environ["EXCHANGE_DATABASE_URL"] = database.url
        if database.embedded is not None and not (
            settings.webhook_key_secret or settings.webhook_key_secret_file
        ):
            # Development: the embedded database's key-encryption key lives beside its
            # data (partners.webhooks.keyring); an external database needs one configured.
            secret_file = development_secret_file(settings.data_dir)
            os.environ["EXCHANGE_WEBHOOK_KEY_SECRET_FILE"] = str(secret_file)
        # Each worker enforces 1/N of every rate limit, so the service as a whole keeps
        # the documented limit (exchange.ratelimit).
        os.environ["EXCHANGE_WORKERS"] = str(workers)
        if not os.environ.get("EXCHANGE_PUBLIC_URL"):
            # Partners sign the host they call; unset, that is where we listen.
            local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            os.environ["EXCHANGE_PUBLIC_URL"] = f"http://{local}:{port}"
        if http_server == "granian":
            _serve_granian(host, port, workers)
            return
        _serve_uvicorn(host, port, workers)


def _serve_uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn  # noqa: PLC0415 - only the server needs it
    from uvicorn.config import STARTUP_FAILURE  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    from exchange.serving import listener_per_worker  # noqa: PLC0415

    config = uvicorn.Config(
        "exchange.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # httptools (uvicorn[standard]) with each response's head and body in one
        # write (exchange.serving).
        http="exchange.serving:CoalescingHttpToolsProtocol",
        # The app decides who the client is from the raw peer (exchange.client_address,
        # EXCHANGE_TRUSTED_PROXIES), as under granian: uvicorn's own X-Forwarded-For
        # rewrite would make the same request mean something else per server.
        proxy_headers=False,
    )
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    # What uvicorn.run does with several workers, but with a listening socket per worker
    # (exchange.serving) instead of one they all accept from.
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[listener_per_worker(config)]).run()


def _serve_granian(host: str, port: int, workers: int) -> None:
    from granian.constants import Interfaces  # noqa: PLC0415 - only the server needs it
    from granian.server import Server  # noqa: PLC0415

    # Spawned, not forked (Linux's default): a worker must import the app afresh, as
    # uvicorn's do, so that prometheus-client sees PROMETHEUS_MULTIPROC_DIR at import and
    # the workers' metrics add up (a forked worker inherits the parent's in-memory mode).
    multiprocessing.set_start_method("spawn", force=True)
    Server(
        "exchange.app:create_served_app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_enabled=False,
    ).serve()


@contextmanager
def _metrics_folder(data_dir: Path, workers: int) -> Iterator[None]:
    """With several workers, prometheus-client keeps its values in files they share (see
    exchange.metrics): a fresh folder per `serve`, set before the workers are spawned and
    removed when the server stops. One process keeps them in memory instead."""
    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    parent = data_dir / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="serve-", dir=parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@main.command("migrate")
def migrate_command() -> None:
    """Apply database migrations up to the latest revision."""
    settings = settings_or_exit()
    configure_logging(settings.log_level, "console")
    with using_database(settings, migrated=False) as database:
        migrate(database.url)
    console.print("Database schema is up to date.")


@main.group()
def tokens() -> None:
    """Operator bearer tokens (admin, finance)."""


@tokens.command("create")
@click.option("--role", type=click.Choice(["admin", "finance"]), required=True)
@click.option("--name", default="operator", show_default=True, help="Who the token is for.")
def tokens_create(role: Any, name: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    token_id, token = run_with_engine(
        settings_or_exit(), lambda engine: create_operator_token(engine, role, name)
    )
    click.echo(token)
    click.echo(
        f"token id {token_id} ({role}, {name}): store the token now; it is not shown again.",
        err=True,
    )


@tokens.command("list")
def tokens_list() -> None:
    """List tokens (ids, names, roles, state; never the tokens themselves)."""
    rows = run_with_engine(settings_or_exit(), list_operator_tokens)
    table = Table("token id", "name", "role", "created", "state")
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        table.add_row(row.token_id, row.name, row.role, f"{row.created_at:%Y-%m-%d %H:%M}", state)
    console.print(table)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its id; it stops working at once."""
    from exchange.errors import NotFound  # noqa: PLC0415

    try:
        run_with_engine(settings_or_exit(), lambda engine: revoke_operator_token(engine, token_id))
    except NotFound as exc:
        raise click.ClickException(exc.detail) from None
    console.print(f"Revoked {token_id}.")


@main.command("verify")
def verify_command() -> None:
    """Recompute every balance and lot from the journal; exit 1 on any difference."""
    from exchange.verify import verify_ledger  # noqa: PLC0415

    report = run_with_engine(settings_or_exit(), verify_ledger)
    totals = report.totals
    console.print(
        f"postings {totals['postings']}, members {totals['members']}, lots {totals['lots']}; "
        f"issued {totals['issued']} - redeemed {totals['redeemed']} - expired {totals['expired']}"
        f" = outstanding {totals['outstanding']}"
    )
    if report.clean:
        console.print("[green]ledger verified: no differences[/green]")
        return
    table = Table("check", "subject", "expected", "actual", title="Differences")
    for item in report.discrepancies:
        table.add_row(item.check, item.subject, item.expected, item.actual)
    console.print(table)
    raise SystemExit(1)


@main.command("sweep")
def sweep_command() -> None:
    """Post what has fallen due now: expired lots, maturing points, holds past expiry."""

    async def sweep(services: Services) -> Any:
        return await services.ledger.sweep()

    result = run_with_services(settings_or_exit(), sweep)
    console.print(
        f"swept {result.members} members: {result.expired_points} points expired, "
        f"{result.matured_points} matured, {result.released_holds} holds released"
    )


@main.group()
def webhooks() -> None:
    """The exchange's webhook signing keys."""


def _with_signing_keys(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run a key job; a missing or wrong key-encryption key is a clear error, not a trace."""
    try:
        return run_with_services(settings_or_exit(), work)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@webhooks.command("rotate-key")
def rotate_webhook_key() -> None:
    """Make a new active signing key; the old one stays listed as retired."""

    async def rotate(services: Services) -> str:
        return await services.webhooks.rotate_key()

    key_id = _with_signing_keys(rotate)
    console.print(f"new webhook signing key {key_id} (listed at GET /v1/exchange-keys)")


@webhooks.command("rewrap-keys")
def rewrap_webhook_keys() -> None:
    """Re-encrypt every signing key under the first EXCHANGE_WEBHOOK_KEY_SECRET key."""

    async def rewrap(services: Services) -> tuple[str, int]:
        return await services.webhooks.rewrap_keys()

    kek_id, count = _with_signing_keys(rewrap)
    console.print(f"{count} webhook signing keys re-encrypted; every key is sealed by {kek_id}")


@main.group()
def audit() -> None:
    """Re-verify what partners signed."""


@audit.command("verify-transaction")
@click.argument("transaction_id")
def audit_verify_transaction(transaction_id: str) -> None:
    """Re-verify a posting's stored request signature against the partner's key
    (revoked keys included: a key's past signatures stay checkable)."""
    from partners.audit import verify_transaction  # noqa: PLC0415

    result = run_with_engine(settings_or_exit(), lambda e: verify_transaction(e, transaction_id))
    console.print(result.describe())
    if not result.valid:
        raise SystemExit(1)


# Settlement's commands live with settlement; registered here, on the one command line.
main.add_command(settle)
main.add_command(report)
