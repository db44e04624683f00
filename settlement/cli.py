"""`exchange settle` and `exchange report ...`: settlement from the server host.

    exchange settle [--period-end T]
    exchange report settlement RUN_ID|latest [--format table|csv|json] [--out FILE]
    exchange report liabilities [--format table|json] [--out FILE]

Exit status: 0 when the run is reconciled, 1 when it is not (so a cron job or CI step
notices), and click's usual non-zero status on errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import click
import msgspec
from rich.console import Console
from rich.table import Table

from exchange.cli_support import run_with_services, settings_or_exit
from exchange.clock import SystemClock
from exchange.config import Settings
from exchange.errors import ExchangeError
from exchange.logs import configure_logging
from exchange.money import format_amount
from exchange.wiring import Services
from settlement import reports
from settlement.schedule import boundary_at_or_before
from settlement.service import RunResult, SettlementService
from settlement.store import LiabilityRow, StoredRun

__all__ = ["report", "settle"]

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    settings = settings_or_exit()
    # Logs go to stderr, so stdout carries only the report (pipe it into a file or jq).
    configure_logging(settings.log_level, "console")
    return settings


def _run(settings: Settings, work: Callable[[SettlementService], Awaitable[T]]) -> T:
    """Run `work` with the settlement service `build_services` wires (system clock)."""

    async def with_settlement(services: Services) -> T:
        return await work(services.settlement)

    try:
        return run_with_services(settings, with_settlement)
    except ExchangeError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give an offset, e.g. 2026-11-24T00:00:00Z")
    return moment


def _stamp(moment: datetime) -> str:
    return reports.format_time(moment)


def run_table(run: StoredRun) -> Table:
    """The run as a terminal table: one row per partner, then the controls."""
    header = run.header
    state = "[green]reconciled[/green]" if header.reconciled else "[bold red]NOT RECONCILED[/]"
    table = Table(
        title=f"{header.run_id}  [{_stamp(header.period_start)}, {_stamp(header.period_end)})"
        f"  {state}",
    )
    for column in ("partner", "cur", "issued", "redeemed", "expired"):
        table.add_column(column, justify="left" if column in ("partner", "cur") else "right")
    for column in ("issuance charge", "redemption credit", "net", "direction"):
        table.add_column(column, justify="right")
    for line in run.settlement.lines:
        direction = "pays" if line.net > 0 else "receives" if line.net < 0 else "-"
        table.add_row(
            line.partner_id,
            line.currency,
            f"{line.issued_points:,}",
            f"{line.redeemed_points:,}",
            f"{line.expired_points:,}",
            format_amount(line.issuance_charge, line.currency),
            format_amount(line.redemption_credit, line.currency),
            format_amount(abs(line.net), line.currency),
            direction,
        )
    return table


def _print_run(run: StoredRun) -> None:
    console.print(run_table(run))
    header, controls = run.header, run.header.controls
    console.print(
        f"outstanding {controls.outstanding_start:,} + issued {controls.issued:,} "
        f"- redeemed {controls.redeemed:,} - expired {controls.expired:,} "
        f"= {controls.outstanding_end:,} (reversed {controls.reversed:,})"
    )
    if run.settlement.cross_brand:
        flows = Table("issuer", "redeemer", "points", title="cross-brand")
        for flow in run.settlement.cross_brand:
            flows.add_row(flow.issuer_id, flow.redeemer_id, f"{flow.points:,}")
        console.print(flows)
    if not header.reconciled:
        failed = ", ".join(header.checks.failed())
        console.print(
            f"[bold red]RUN {header.run_id} DOES NOT RECONCILE (failed: {failed}). "
            "Do not pay out; see docs/settlement.md.[/bold red]"
        )


@click.command("settle")
@click.option(
    "--period-end",
    default=None,
    help="RFC 3339 time to settle until (default: the latest cycle boundary <= now).",
)
def settle(period_end: str | None) -> None:
    """Settle every partner for [latest run's period_end, PERIOD_END)."""
    settings = _settings()
    moment = (
        _parse_time(period_end)
        if period_end
        else boundary_at_or_before(
            SystemClock().now(), settings.settlement_cycle, ZoneInfo(settings.settlement_timezone)
        )
    )

    async def work(service: SettlementService) -> RunResult:
        return await service.run_settlement(moment, created_by="cli")

    result = _run(settings, work)
    if not result.created:
        console.print(f"A run for {_stamp(moment)} already exists; showing it.")
    _print_run(result.run)
    if not result.run.header.reconciled:
        raise SystemExit(1)


@click.group("report")
def report() -> None:
    """Settlement and liability reports for finance."""


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {out}")


@report.command("settlement")
@click.argument("run_id")
@click.option("--format", "output", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def report_settlement(run_id: str, output: str, out: Path | None) -> None:
    """Show a run (RUN_ID, or `latest`) as a table, CSV or JSON."""
    settings = _settings()

    async def work(service: SettlementService) -> StoredRun:
        wanted = run_id
        if run_id == "latest":
            latest = await service.latest_run()
            if latest is None:
                raise click.ClickException("No settlement run yet.")
            wanted = latest.run_id
        return await service.get_run(wanted)

    run = _run(settings, work)
    if output == "json":
        _emit(msgspec.json.format(msgspec.json.encode(reports.run_view(run))).decode(), out)
    elif output == "csv":
        _emit(reports.run_csv(run), out)
    elif out is not None:
        with out.open("w", encoding="utf-8") as file:
            Console(file=file, width=160).print(run_table(run))
        err_console.print(f"wrote {out}")
    else:
        _print_run(run)
    if not run.header.reconciled:
        err_console.print(f"[bold red]RUN {run.run_id} IS NOT RECONCILED[/bold red]")
        raise SystemExit(1)


def _liabilities_table(as_of: datetime, rows: list[LiabilityRow]) -> Table:
    table = Table(title=f"Outstanding points as of {_stamp(as_of)}")
    for column in ("issuer", "cur", "points", "value", "<=30d", "<=90d", "<=365d", "later"):
        table.add_column(column, justify="left" if column in ("issuer", "cur") else "right")
    for row in rows:
        points = sum(points for points, _ in row.buckets)
        value = sum((value for _, value in row.buckets), start=Decimal(0))
        table.add_row(
            row.partner_id,
            row.currency,
            f"{points:,}",
            format_amount(value, row.currency),
            *(f"{bucket_points:,}" for bucket_points, _ in row.buckets),
        )
    return table


@report.command("liabilities")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def report_liabilities(output: str, out: Path | None) -> None:
    """Outstanding points per issuing partner now, valued at issue price, aged by expiry."""
    settings = _settings()

    async def work(service: SettlementService) -> tuple[datetime, list[LiabilityRow]]:
        return await service.liabilities()

    as_of, rows = _run(settings, work)
    if output == "json":
        view = reports.liabilities_view(as_of, rows)
        _emit(msgspec.json.format(msgspec.json.encode(view)).decode(), out)
    elif out is not None:
        with out.open("w", encoding="utf-8") as file:
            Console(file=file, width=160).print(_liabilities_table(as_of, rows))
    else:
        console.print(_liabilities_table(as_of, rows))
