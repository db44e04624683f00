"""The yardstick: pgbench's built-in TPC-B-like script on the same PostgreSQL.

Each pgbench transaction updates three rows, reads one and inserts one, in one durable
commit: roughly the database work of one earn, done by C's fastest possible client. The
exchange's throughput divided by this tps says how much of the database's capacity the
exchange turns into postings. pgbench runs in its own database (`pgbench`, scale 10), with
the same client count and duration as the scenarios, while the exchange is idle.
"""

from __future__ import annotations

import re
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from exchange.embedded import POSTGRES_BIN_PATH, SUPERUSER, EmbeddedPostgres
from exchange.tools.bench.cluster import database_counters
from exchange.tools.bench.monitor import CpuWindow, Monitor, cpu_ms_per_item

__all__ = ["PgbenchResult", "parse_pgbench_output", "percentiles_ms", "run_pgbench"]

DATABASE = "pgbench"
SCALE = 10
THREADS_MAX = 2
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    clients: int
    threads: int
    seconds: int
    scale: int
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float
    latency_ms: dict[str, float]  # p50, p95, p99, max from the per-transaction log
    cpu: CpuWindow
    cpu_ms_per_transaction: dict[str, float]
    write_transactions_per_transaction: float
    wal_bytes_per_transaction: float
    output: str


def percentiles_ms(latencies_us: list[int]) -> dict[str, float]:
    """p50/p95/p99/max in ms (nearest rank) of latencies in microseconds."""
    if not latencies_us:
        return {}
    ordered = sorted(latencies_us)

    def rank(fraction: float) -> float:
        index = min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))
        return round(ordered[index] / 1000, 2)

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1] / 1000, 2),
        "mean": round(sum(ordered) / len(ordered) / 1000, 2),
    }


def parse_pgbench_output(output: str) -> tuple[float, float, int, int]:
    """(tps, latency average ms, transactions processed, failed) from pgbench's summary."""
    tps, latency, processed = (
        _TPS.search(output),
        _LATENCY.search(output),
        _PROCESSED.search(output),
    )
    if tps is None or latency is None or processed is None:
        raise RuntimeError(f"could not read pgbench's summary:\n{output}")
    failed = _FAILED.search(output)
    return (
        float(tps.group(1)),
        float(latency.group(1)),
        int(processed.group(1)),
        int(failed.group(1)) if failed else 0,
    )


def _pgbench(postgres: EmbeddedPostgres, *args: str, cwd: Path) -> subprocess.Popen[str]:
    command = [
        str(POSTGRES_BIN_PATH / "pgbench"),
        "-h",
        str(postgres.socket_dir),
        "-U",
        SUPERUSER,
        *args,
        DATABASE,
    ]
    return subprocess.Popen(  # noqa: S603 - the wheel's own pgbench
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=postgres.client_env(),
    )


def _finish(process: subprocess.Popen[str], what: str) -> str:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pgbench {what} failed ({process.returncode}):\n{output}")
    return output


def _log_latencies_us(workdir: Path) -> list[int]:
    """Per-transaction latencies from pgbench's `-l` logs (third field, microseconds)."""
    latencies: list[int] = []
    for path in sorted(workdir.glob("pgbench_log*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]))
    return latencies


def run_pgbench(
    postgres: EmbeddedPostgres, monitor: Monitor, *, clients: int, seconds: int, workdir: Path
) -> PgbenchResult:
    """Initialise scale 10, checkpoint, then run `-c clients -j 2 -T seconds` with logs."""
    workdir.mkdir(parents=True, exist_ok=True)
    postgres.ensure_database(DATABASE)
    _finish(_pgbench(postgres, "-i", "-s", str(SCALE), "-q", cwd=workdir), "-i")
    postgres.psql("CHECKPOINT", DATABASE)
    threads = min(THREADS_MAX, clients)
    args = ["-c", str(clients), "-j", str(threads), "-T", str(seconds), "-l"]
    process = _pgbench(postgres, *args, "--log-prefix", str(workdir / "pgbench_log"), cwd=workdir)
    counters_before = database_counters(postgres)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = monitor.read_cpu()
    output = _finish(process, "run")
    end = monitor.read_cpu()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    counters_after = database_counters(postgres)
    tps, latency_avg, processed, failed = parse_pgbench_output(output)
    # pgbench has exited by the end reading: its CPU comes from the reaped children's usage.
    window = Monitor.window(start, end)
    client_s = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    client_percent = round(100.0 * client_s / window.seconds, 1)
    other = round(max(0.0, window.percent.get("other", 0.0) - client_percent), 1)
    cpu = CpuWindow(
        window.seconds,
        window.percent | {"pgbench": client_percent, "other": other},
        window.machine_busy_percent,
    )
    return PgbenchResult(
        clients=clients,
        threads=threads,
        seconds=seconds,
        scale=SCALE,
        tps=tps,
        transactions=processed,
        failed=failed,
        latency_avg_ms=latency_avg,
        latency_ms=percentiles_ms(_log_latencies_us(workdir)),
        cpu=cpu,
        cpu_ms_per_transaction=cpu_ms_per_item(cpu, processed),
        write_transactions_per_transaction=round(
            (counters_after.xid - counters_before.xid) / max(processed, 1), 2
        ),
        wal_bytes_per_transaction=round(
            (counters_after.wal_bytes - counters_before.wal_bytes) / max(processed, 1), 1
        ),
        output=output.strip(),
    )
