"""One bench run, phase by phase (method: docs/performance.md).

    start PostgreSQL (fresh, durable) and `exchange serve` → pgbench baseline (exchange idle)
    → setup (partners, members, opening balances; verify) → the timed scenarios
    → optional soak → the batch scenario → verify → tables and JSON → stop everything,
    whatever happened. `--only` keeps the named scenarios (always after the baseline).

`run_bench` returns the JSON document and whether the run failed (the ledger did not
verify, or a measurement was invalid); `cli.bench` is the command around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psutil
from rich.console import Console

from exchange.config import ConfigError, Settings
from exchange.db import create_engine
from exchange.embedded import EmbeddedPostgres
from exchange.tools.bench import statements
from exchange.tools.bench.baseline import PgbenchResult, run_pgbench
from exchange.tools.bench.batches import BatchResult, run_batch_scenario
from exchange.tools.bench.cluster import (
    BENCH_CONTROLLED,
    Server,
    database_counters,
    filesystem_of,
    postmaster_pid,
    start_postgres,
    start_server,
)
from exchange.tools.bench.monitor import Group, Monitor
from exchange.tools.bench.presign import SigningPool, Workload, check_fast_signer
from exchange.tools.bench.profiling import py_spy_profiler
from exchange.tools.bench.report import (
    SoakResult,
    Target,
    describe_environment,
    evaluate_targets,
    interpreter,
    print_report,
    soak_result,
)
from exchange.tools.bench.scenarios import SCENARIOS, ScenarioResult, Stage, run_scenario
from exchange.tools.bench.setup import SetupReport, build_population, verify
from exchange.tools.bench.statements import StatementStat
from exchange.verify import VerifyReport

__all__ = ["SCENARIO_NAMES", "Options", "Run", "console", "run_bench"]

# Wide when writing to a file or pipe, where rich would otherwise assume 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=200)
CONNECTIONS_SPARE = 20
DISCREPANCIES_SHOWN = 10
FOREIGN_CPU_PERCENT_MAX = 25.0  # of one core, used by processes the bench did not start
BATCHES = "batches"
# What `--only` may name: the timed HTTP scenarios, then the batch scenario.
SCENARIO_NAMES = (*(scenario.name for scenario in SCENARIOS), BATCHES)
BATCH_VS_PGBENCH_MIN = 3.0  # issue 14: batch postings per second against pgbench tps
STATEMENTS_SHOWN = 5  # per scenario on the console, with --statements
STATEMENT_CHARS_SHOWN = 110


@dataclass(frozen=True, slots=True)
class Options:
    seconds: int
    clients: int
    workers: int
    server: str
    members: int
    partners: int
    soak: int
    out: Path
    data_dir: Path | None
    keep_data: bool
    profile: bool
    only: tuple[str, ...] = ()  # scenario names; empty: every scenario
    statements: bool = False  # pg_stat_statements per scenario (exchange.tools.bench.statements)
    lots: int = 1  # opening earns, so open lots, per member (setup.build_population)

    def runs(self, name: str) -> bool:
        return not self.only or name in self.only


@dataclass
class Run:
    """Everything a bench run starts, measures and must stop."""

    options: Options
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    phases_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    data_dir: Path = Path()
    postgres: EmbeddedPostgres | None = None
    server: Server | None = None
    monitor: Monitor | None = None
    pool: SigningPool | None = None
    statements: dict[str, list[StatementStat]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.started:7.1f}s[/dim] {message}")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases_s[name] = round(time.monotonic() - started, 2)

    @property
    def workdir(self) -> Path:
        return self.data_dir / "work"


def run_bench(options: Options) -> tuple[dict[str, Any], bool]:
    """The whole run; everything started is stopped before this returns or raises."""
    run = Run(options)
    try:
        return _run(run)
    finally:
        _shut_down(run)


def _run(run: Run) -> tuple[dict[str, Any], bool]:
    options = run.options
    check_fast_signer()
    _say_interpreter(run)
    _start(run)
    assert run.postgres is not None
    assert run.server is not None
    assert run.monitor is not None
    with run.phase("pgbench"):
        run.say(f"pgbench baseline: -c {options.clients} -T {options.seconds} (scale 10)")
        baseline = run_pgbench(
            run.postgres,
            run.monitor,
            clients=options.clients,
            seconds=options.seconds,
            workdir=run.workdir / "pgbench",
        )
    run.say(f"  pgbench: {baseline.tps:,.0f} tps, p99 {baseline.latency_ms.get('p99')} ms")
    workload, setup, setup_check = _setup(run)
    scenarios, soak = _timed(run, workload, baseline)
    batch = _batches(run, workload, baseline) if options.runs(BATCHES) else None
    with run.phase("verify_after"):
        after, after_s = asyncio.run(_verify(run.postgres.url()))
    run.say(f"verify after the run: {'clean' if after.clean else 'NOT CLEAN'} ({after_s} s)")
    targets = _targets(baseline, scenarios, soak, batch, after.clean)
    print_report(
        console,
        baseline=baseline,
        scenarios=scenarios,
        soak=soak,
        targets=targets,
        cores=psutil.cpu_count() or 1,
    )
    measured = [*scenarios, *([soak.run] if soak else [])]
    invalid = [s.name for s in measured if not s.valid]
    foreign = [(r.name, r.cpu_percent) for r in measured]
    foreign += [(batch.name, batch.cpu_percent)] if batch else []
    for name, cpu_percent in foreign:
        other = cpu_percent.get("other", 0.0)
        if other > FOREIGN_CPU_PERCENT_MAX:
            run.warnings.append(
                f"{name}: other processes on the machine used {other:.0f}% of a core; "
                "its figures are perturbed"
            )
    if invalid:
        run.warnings.append(f"invalid measurements (load generator limited): {invalid}")
    for warning in run.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    document = _document(
        run,
        baseline=baseline,
        setup=setup,
        setup_check=setup_check,
        scenarios=scenarios,
        soak=soak,
        after=after,
        targets=targets,
    )
    document["batches"] = batch
    return document, bool(invalid) or not after.clean


def _say_interpreter(run: Run) -> None:
    python = interpreter()
    run.say(
        f"interpreter: {python['implementation']} {python['version']} at "
        f"{python['executable']}, libpython {python['libpython'] or 'unknown'}"
    )
    if python["unoptimized"]:
        run.warnings.append(
            "this interpreter runs from a shared libpython and was configured without "
            "--enable-optimizations; on the bench's own machine the same code needed 14% "
            "less server CPU per balance read on Debian's python3.11 (static, PGO and LTO): "
            "compare these figures only with runs on the same interpreter "
            '(docs/performance.md, "Which Python")'
        )


def _targets(
    baseline: PgbenchResult,
    scenarios: list[ScenarioResult],
    soak: SoakResult | None,
    batch: BatchResult | None,
    clean: bool,
) -> list[Target]:
    """Issue 16's targets when every timed scenario ran, issue 14's when the batches did,
    and the ledger's verification always."""
    by_name = {s.name: s for s in scenarios}
    if set(by_name) >= {s.name for s in SCENARIOS}:
        targets = evaluate_targets(baseline, by_name, soak, clean)
    else:
        targets = [Target("ledger verifies after the run", "clean", _clean(clean), clean)]
    if batch is not None:
        ratio = batch.ratio_to_pgbench or 0.0
        targets.append(
            Target(
                "batch postings vs pgbench tps",
                f"≥ {BATCH_VS_PGBENCH_MIN:.1f}x",
                f"{ratio:.2f}x ({batch.postings_per_s:,.0f}/s vs {baseline.tps:,.0f} tps)",
                ratio >= BATCH_VS_PGBENCH_MIN,
            )
        )
    return targets


def _clean(clean: bool) -> str:
    return "clean" if clean else "NOT CLEAN"


def _start(run: Run) -> None:
    options = run.options
    run.data_dir = _data_dir(options.data_dir)
    run.workdir.mkdir(parents=True, exist_ok=True)
    fs = filesystem_of(run.data_dir)
    if fs in {"tmpfs", "ramfs"}:
        run.warnings.append(f"{run.data_dir} is on {fs}: fsync costs nothing there")
    inherited = {k: v for k, v in os.environ.items() if k not in BENCH_CONTROLLED}
    try:
        pool_size = Settings.from_env(inherited).db_connections
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    connections = max(200, options.workers * pool_size + options.clients + CONNECTIONS_SPARE)
    with run.phase("start"):
        run.say(f"PostgreSQL (durable) in {run.data_dir} on {fs}")
        preload = (statements.EXTENSION,) if options.statements else ()
        run.postgres = start_postgres(run.data_dir, max_connections=connections, preload=preload)
        if options.statements:
            statements.enable(run.postgres)
        run.say(f"exchange serve --workers {options.workers} --server {options.server}")
        try:
            run.server = start_server(
                run.postgres.url(),
                workers=options.workers,
                log_path=run.workdir / "server.log",
                http_server=options.server,
            )
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    server_group = Group("server", run.server.process.pid)
    run.monitor = Monitor(
        [server_group, Group("postgres", postmaster_pid(run.postgres))], server_group
    )
    run.monitor.start_sampling()
    run.say(f"  ready on {run.server.base_url} (workers {run.server.worker_pids()})")


def _data_dir(requested: Path | None) -> Path:
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="exchange-bench-"))
    if requested.exists() and any(requested.iterdir()):
        raise click.ClickException(
            f"--data-dir {requested} is not empty; the bench needs a fresh one"
        )
    requested.mkdir(parents=True, exist_ok=True)
    return requested.resolve()


async def _verify(url: str) -> tuple[VerifyReport, float]:
    engine = create_engine(url, pool_size=2)
    try:
        return await verify(engine)
    finally:
        await engine.dispose()


def _setup(run: Run) -> tuple[Workload, SetupReport, VerifyReport]:
    options = run.options
    assert run.postgres is not None
    assert run.server is not None
    url, server = run.postgres.url(), run.server

    async def populate() -> tuple[Workload, SetupReport]:
        engine = create_engine(url, pool_size=6)
        try:
            return await build_population(
                engine,
                server.base_url,
                server.settings.authority,
                partners=options.partners,
                members=options.members,
                progress=run.say,
                lots=options.lots,
            )
        finally:
            await engine.dispose()

    with run.phase("setup"):
        run.say(
            f"setup: {options.partners} partners, {options.members:,} members"
            f", {options.lots} open lot{'s' if options.lots > 1 else ''} each"
        )
        workload, setup = asyncio.run(populate())
    with run.phase("verify_setup"):
        check, seconds = asyncio.run(_verify(url))
    if not check.clean:
        raise click.ClickException(
            "the ledger does not verify after setup:\n" + _discrepancies(check)
        )
    run.say(f"  verify after setup: clean ({seconds} s); VACUUM ANALYZE, CHECKPOINT")
    with run.phase("vacuum"):
        run.postgres.psql("VACUUM ANALYZE")
        run.postgres.psql("CHECKPOINT")
    return workload, setup, check


def _discrepancies(report: VerifyReport) -> str:
    return "\n".join(
        f"  {item.check} {item.subject}: expected {item.expected}, actual {item.actual}"
        for item in report.discrepancies[:DISCREPANCIES_SHOWN]
    )


def _timed(
    run: Run, workload: Workload, baseline: PgbenchResult
) -> tuple[list[ScenarioResult], SoakResult | None]:
    options = run.options
    assert run.postgres is not None
    assert run.server is not None
    assert run.monitor is not None
    postgres = run.postgres
    run.pool = SigningPool(workload)
    stage = Stage(
        pool=run.pool,
        monitor=run.monitor,
        port=run.server.port,
        clients=options.clients,
        workdir=run.workdir,
        checkpoint=lambda: _checkpoint(postgres),
        counters=lambda: database_counters(postgres),
        progress=run.say,
        profile=py_spy_profiler(run.server, options.out) if options.profile else None,
    )
    results: list[ScenarioResult] = []
    for scenario in (s for s in SCENARIOS if options.runs(s.name)):
        with run.phase(scenario.name), _statements_of(run, scenario.name):
            run.say(f"scenario {scenario.name} ({scenario.title}): {options.seconds} s")
            result = run_scenario(stage, scenario, options.seconds)
        result.ratio_to_pgbench = round(result.ok_rps / baseline.tps, 3) if baseline.tps else None
        run.say(_one_line(result))
        results.append(result)
    soak = None
    if options.soak:
        floor = next((r.ok_rps for r in results if r.name == SCENARIOS[0].name), 0.0)
        with run.phase("soak"):
            run.say(f"soak: uniform earns for {options.soak} s")
            soaked = run_scenario(stage, SCENARIOS[0], options.soak, rate_floor=floor)
        soaked.name = "soak_uniform_earn"
        soaked.ratio_to_pgbench = round(soaked.ok_rps / baseline.tps, 3) if baseline.tps else None
        soak = soak_result(soaked)
        run.say(_one_line(soaked) + f", RSS growth {soak.growth_percent}%")
    return results, soak


def _batches(run: Run, workload: Workload, baseline: PgbenchResult) -> BatchResult:
    """1,000-item batches from (up to) 50 partners at once: postings/s against pgbench."""
    assert run.server is not None
    assert run.monitor is not None
    assert run.postgres is not None
    with run.phase("batches"), _statements_of(run, BATCHES):
        run.say("scenario batches: one 1,000-item batch per partner (up to 50), all at once")
        result = asyncio.run(
            run_batch_scenario(run.server.base_url, run.postgres.url(), workload, run.monitor)
        )
    result.ratio_to_pgbench = (
        round(result.postings_per_s / baseline.tps, 3) if baseline.tps else None
    )
    run.say(
        f"  batches: {result.posted:,} posted, {result.rejected} rejected in {result.seconds} s"
        f" = {result.postings_per_s:,.0f} postings/s, {result.ratio_to_pgbench} x pgbench tps"
        f" (target >= {BATCH_VS_PGBENCH_MIN} x); CPU % of a core {result.cpu_percent},"
        f" ms per posting {result.cpu_ms_per_posting}"
    )
    return result


@contextlib.contextmanager
def _statements_of(run: Run, name: str) -> Iterator[None]:
    """With --statements: the scenario's own pg_stat_statements counters, kept for the JSON
    and the top few shown."""
    if not run.options.statements:
        yield
        return
    assert run.postgres is not None
    statements.reset(run.postgres)
    yield
    stats = run.statements[name] = statements.top(run.postgres)
    run.say("  PostgreSQL's top-level statements, share of their time:")
    for percent, stat in statements.shares(stats, STATEMENTS_SHOWN):
        run.say(
            f"    {percent:3d}%  {stat.calls:,} calls, {stat.mean_ms} ms each:"
            f" {stat.query[:STATEMENT_CHARS_SHOWN]}"
        )


def _checkpoint(postgres: EmbeddedPostgres) -> None:
    postgres.psql("CHECKPOINT")


def _one_line(result: ScenarioResult) -> str:
    return (
        f"  {result.name}: {result.ok_rps:,.0f} req/s ok, p99 {result.latency_ms.get('p99')} ms, "
        f"errors {result.errors}, loadgen {result.cpu_percent.get('loadgen')}% CPU, "
        f"server {result.cpu_ms_per_request.get('server')} ms CPU/request"
    )


def _shut_down(run: Run) -> None:
    """Stop whatever was started, in reverse order; never raise over the original error."""
    steps: list[tuple[str, Callable[[], None] | None]] = [
        ("signing pool", run.pool.close if run.pool else None),
        ("monitor", run.monitor.stop if run.monitor else None),
        ("server", run.server.stop if run.server else None),
        ("PostgreSQL", run.postgres.stop if run.postgres else None),
    ]
    for what, step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception as exc:  # keep stopping the rest
            console.print(f"[yellow]could not stop the {what}: {exc}[/yellow]")
    if run.options.data_dir is None and not run.options.keep_data and run.data_dir != Path():
        shutil.rmtree(run.data_dir, ignore_errors=True)
    elif run.data_dir != Path():
        console.print(f"data kept in {run.data_dir}")


def _document(
    run: Run,
    *,
    baseline: PgbenchResult,
    setup: SetupReport,
    setup_check: VerifyReport,
    scenarios: list[ScenarioResult],
    soak: SoakResult | None,
    after: VerifyReport,
    targets: list[Any],
) -> dict[str, Any]:
    assert run.postgres is not None
    assert run.server is not None
    options = run.options
    settings = run.server.settings
    return {
        "schema": "exchange-bench/1",
        "started_at": run.started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "options": options,
        **describe_environment(run.postgres, run.data_dir),
        "server": {
            "workers": options.workers,
            "http_server": options.server,
            "db_pool_size": settings.db_pool_size,
            "batch_processors": settings.batch_processors,
            "group_commit_max": settings.group_commit_max,
            "inherited_settings": sorted(
                k for k in os.environ if k.startswith("EXCHANGE_") and k not in BENCH_CONTROLLED
            ),
        },
        "phases_s": run.phases_s,
        "baseline": baseline,
        "setup": {"report": setup, "verify_clean": setup_check.clean, "totals": setup_check.totals},
        "scenarios": {result.name: result for result in scenarios},
        "soak": soak,
        "verify_after": {
            "clean": after.clean,
            "totals": after.totals,
            "discrepancies": after.discrepancies,
        },
        "targets": targets,
        "statements": run.statements,
        "warnings": run.warnings,
    }
