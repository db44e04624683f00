"""`exchange bench`: the whole benchmark in one command (method: docs/performance.md).

The lead registers it with `main.add_command(bench)` in `exchange.cli`; until then:
`python -c "from exchange.bench.cli import bench; bench()" --seconds 5 ...`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from exchange.bench.report import write_json
from exchange.bench.run import Options, console, run_bench

__all__ = ["bench"]

DEFAULT_WORKERS = os.cpu_count() or 1
DEFAULT_CLIENTS = 16


def _default_out() -> Path:
    return Path("bench-results") / f"bench-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"


@click.command("bench")
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
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON results [default: bench-results/bench-<timestamp>.json].",
)
@click.option("--members", default=100_000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--partners", default=50, show_default=True, type=click.IntRange(1, 1000))
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
    "--profile",
    is_flag=True,
    help="py-spy flame graphs of each server worker per scenario (perturbs figures).",
)
def bench(**values: Any) -> None:
    """Benchmark the exchange end to end, against pgbench on the same PostgreSQL.

    Starts its own durable PostgreSQL and `exchange serve`, runs the pgbench baseline,
    builds the population, runs uniform earns, hot-partner earns, hot-member burns and
    balance reads over signed HTTP, verifies the ledger, prints the figures against the
    targets and writes them as JSON. Exit status 1 if the ledger does not verify or a
    measurement is invalid (the load generator ran out of requests or saturated).
    """
    options = Options(**(values | {"out": values["out"] or _default_out()}))
    document, failed = run_bench(options)
    write_json(options.out, document)
    console.print(f"results written to [bold]{options.out}[/bold]")
    if failed:
        raise SystemExit(1)
