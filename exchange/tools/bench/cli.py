"""`exchange bench`: the whole benchmark in one command (method: docs/performance.md),
and `exchange bench settlement`: one settlement run over a generated million postings.

`exchange.cli` registers `bench` lazily (this module is imported only when it runs).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from exchange.tools.bench.report import write_json
from exchange.tools.bench.run import SCENARIO_NAMES, Options, console, run_bench
from exchange.tools.bench.settlement import SettlementBenchOptions, run_settlement_bench

__all__ = ["bench"]

DEFAULT_WORKERS = os.cpu_count() or 1
DEFAULT_CLIENTS = 16


def _default_out() -> Path:
    return Path("bench-results") / f"bench-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"


def _scenarios(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in SCENARIO_NAMES]
    if unknown:
        raise click.BadParameter(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIO_NAMES)}"
        )
    return names


@click.group("bench", invoke_without_command=True)
@click.option(
    "--seconds",
    default=20,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Length of each scenario and of the pgbench baseline.",
)
@click.option(
    "--clients",
    default=DEFAULT_CLIENTS,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Concurrent connections (pgbench -c too).",
)
@click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(1, 64),
    help="exchange serve --workers.",
)
@click.option(
    "--server",
    default="uvicorn",
    show_default=True,
    type=click.Choice(["uvicorn", "granian"]),
    help="exchange serve --server: the HTTP server around the same app.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON results [default: bench-results/bench-<timestamp>.json].",
)
@click.option("--members", default=100_000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--partners", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--lots",
    default=1,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Open lots per member at the start: that many opening earns each. A member who"
    " earns daily and seldom burns has hundreds; each burn loads them all.",
)
@click.option(
    "--soak",
    default=0,
    show_default=True,
    type=click.IntRange(0, 86_400),
    help="Also run uniform earns this long and report the server's RSS trend.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where PostgreSQL and scratch files go (new or empty) [default: a temp dir].",
)
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the temporary data folder afterwards (a --data-dir is always kept).",
)
@click.option(
    "--only",
    default="",
    metavar="SCENARIO[,SCENARIO]",
    callback=lambda _ctx, _param, value: _scenarios(value),
    help=f"Run only these scenarios (after the pgbench baseline): {', '.join(SCENARIO_NAMES)}.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="py-spy flame graphs of each server worker per scenario (perturbs figures).",
)
@click.option(
    "--statements",
    is_flag=True,
    help="PostgreSQL's costliest statements per scenario (pg_stat_statements), in the JSON"
    " under `statements` (perturbs figures slightly).",
)
@click.pass_context
def bench(ctx: click.Context, /, **values: Any) -> None:
    """Benchmark the exchange end to end, against pgbench on the same PostgreSQL.

    Starts its own durable PostgreSQL and `exchange serve`, runs the pgbench baseline,
    builds the population, runs uniform earns, hot-partner earns, hot-member burns and
    balance reads over signed HTTP, verifies the ledger, prints the figures against the
    targets and writes them as JSON. Exit status 1 if the ledger does not verify or a
    measurement is invalid (the load generator ran out of requests or saturated).

    `exchange bench settlement` benchmarks a settlement run instead (see its --help).
    """
    if ctx.invoked_subcommand is not None:
        return
    options = Options(**(values | {"out": values["out"] or _default_out()}))
    document, failed = run_bench(options)
    write_json(options.out, document)
    console.print(f"results written to [bold]{options.out}[/bold]")
    if failed:
        raise SystemExit(1)


@bench.command("settlement")
@click.option("--postings", default=1_000_000, show_default=True, type=click.IntRange(10, 10**9))
@click.option("--members", default=100_000, show_default=True, type=click.IntRange(1, 10**8))
@click.option("--partners", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Run exchange verify first."
)
@click.option("--explain", is_flag=True, help="Print each measuring query's plan.")
def settlement(**values: Any) -> None:
    """Time one settlement run over a generated ledger, against a plain scan baseline.

    Starts a throwaway embedded PostgreSQL, writes a consistent ledger directly in SQL
    (earns with their lots, burns drawing on them, across many members and partners),
    then times plain count/sum scans of the journal tables and a full settlement run
    (sweep, close, compute and store) in the same database.
    """
    run_settlement_bench(SettlementBenchOptions(**values))
