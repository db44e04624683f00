"""The timed scenarios: warm up, pre-sign, send, measure.

For each scenario: CHECKPOINT (every scenario starts with a clean buffer cache state), a
short warm-up that also measures the rate, then enough requests for the whole window,
signed right before it (signatures are valid 300 s, so windows longer than SEGMENT_S_MAX
run as consecutive segments, each signed just before it runs), then the load generator
process sends them while the orchestrator reads CPU per process group at the window's
edges and the monitor samples the server's RSS every second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange.tools.bench.baseline import percentiles_ms
from exchange.tools.bench.cluster import DatabaseCounters
from exchange.tools.bench.monitor import (
    CpuWindow,
    Group,
    Monitor,
    RssSample,
    cpu_ms_per_item,
    rss_summary,
)
from exchange.tools.bench.presign import RequestKind, SigningPool

__all__ = [
    "SCENARIOS",
    "LoadRun",
    "Scenario",
    "ScenarioResult",
    "Stage",
    "run_scenario",
]

WARMUP_S_MAX = 3.0
WARMUP_S_MIN = 1.0
WARMUP_REQUESTS_PER_S_GUESS = 2_500
SIGN_MARGIN = 2.0  # sign twice what the warm-up rate predicts (a few MB; seconds to sign)
SIGN_PER_CLIENT_MIN = 50
SEGMENT_S_MAX = 180.0  # + signing time stays well inside the 300 s signature window
LOADGEN_BUSY_PERCENT_MAX = 80.0  # of one core: above this the generator may be the limit
LOADGEN_START_TIMEOUT_S = 120.0
EXHAUSTED_RETRIES = 1


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    kind: RequestKind
    expected: frozenset[str] = frozenset()  # answers that are not errors, e.g. a 422 code
    clients: int | None = None  # a fixed client count instead of --clients


SCENARIOS = (
    Scenario("uniform_earn", "earn: random partner, random member", "earn_uniform"),
    Scenario("hot_partner", "earn: one partner, random members", "earn_hot_partner"),
    Scenario(
        "hot_members",
        "burn: 10 hot members",
        "burn_hot_members",
        frozenset({"422 insufficient_points"}),
    ),
    Scenario("balance_reads", "balance: signed GET, random members", "balance_read"),
    # One request at a time: the latency of one earn end to end, with nothing to share a
    # commit with (its median is a target of its own, not a fraction of pgbench).
    Scenario("single_client", "earn: one client, random members", "earn_uniform", clients=1),
)


@dataclass
class LoadRun:
    """One load generator window, as reported by the generator and measured around it."""

    result: dict[str, Any]
    cpu: CpuWindow
    started_at: float  # time.monotonic()
    ended_at: float
    write_transactions: int = 0
    wal_bytes: int = 0


@dataclass
class ScenarioResult:
    name: str
    title: str
    clients: int
    seconds: float  # measured window (sum over segments)
    warmup_rps: float
    signed: int
    sign_seconds: float
    sent: int
    ok: int
    ok_rps: float
    expected_rejections: int
    errors: int
    outcomes: dict[str, int]
    latency_ms: dict[str, float]  # over successful answers
    latency_all_ms: dict[str, float]  # over every answer
    cpu_percent: dict[str, float]
    # CPU time per answered request of each group (the cost of one request, where it goes).
    cpu_ms_per_request: dict[str, float]
    # Durable commits (writing transactions) and WAL per answered request, cluster-wide.
    write_transactions_per_request: float | None
    wal_bytes_per_request: float | None
    machine_busy_percent: float
    rss: dict[str, float | int | None]
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (s from start, MiB)
    exhausted: bool = False
    loadgen_saturated: bool = False
    ratio_to_pgbench: float | None = None

    @property
    def valid(self) -> bool:
        return not self.exhausted and not self.loadgen_saturated


@dataclass
class Stage:
    """What a scenario run needs from the orchestrator."""

    pool: SigningPool
    monitor: Monitor
    port: int
    clients: int
    workdir: Path
    checkpoint: Callable[[], None]
    progress: Callable[[str], None]
    counters: Callable[[], DatabaseCounters] | None = None
    profile: Callable[[str, float], Callable[[], None]] | None = None


def run_loadgen(stage: Stage, requests: Path, seconds: float) -> LoadRun:
    """Run the generator process over `requests` for `seconds`, measuring CPU around it."""
    out = requests.with_suffix(".result.json")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            *(sys.executable, "-m", "exchange.tools.bench.loadgen", "--requests", str(requests)),
            *("--port", str(stage.port), "--clients", str(stage.clients)),
            *("--seconds", str(seconds), "--out", str(out)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _expect_line(process, "ready")
        before = stage.counters() if stage.counters else None
        loadgen = Group("loadgen", process.pid)
        start = stage.monitor.read_cpu([loadgen])
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        _expect_line(process, "done")
        end = stage.monitor.read_cpu([loadgen])
        after = stage.counters() if stage.counters else None
        if process.wait(timeout=LOADGEN_START_TIMEOUT_S) != 0:
            raise RuntimeError(f"the load generator exited with {process.returncode}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = json.loads(out.read_text())
    out.unlink()
    run = LoadRun(result, Monitor.window(start, end), start.at, end.at)
    if before is not None and after is not None:
        run.write_transactions = after.xid - before.xid
        run.wal_bytes = after.wal_bytes - before.wal_bytes
    return run


def _expect_line(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != word:
        process.kill()
        raise RuntimeError(f"the load generator said {line!r}, expected {word!r}")


def _rate(run: LoadRun) -> float:
    result = run.result
    answered = sum(result["outcomes"].values())
    window = float(result["exhausted_at_s"] or result["elapsed_s"])
    return float(answered) / max(window, 1e-3)


def _warm_up(stage: Stage, scenario: Scenario, seconds: float) -> float:
    """Run the scenario briefly (its effects are real postings) and return its request rate.

    Running out of requests here is fine: the rate up to that moment is the estimate.
    """
    warmup_s = min(WARMUP_S_MAX, max(WARMUP_S_MIN, seconds / 5))
    count = max(int(warmup_s * WARMUP_REQUESTS_PER_S_GUESS), stage.clients * SIGN_PER_CLIENT_MIN)
    path = stage.workdir / f"{scenario.name}-warmup.bin"
    stage.pool.sign_to_file(scenario.kind, count, path)
    run = run_loadgen(stage, path, warmup_s)
    path.unlink()
    return _rate(run)


def _segments(seconds: float) -> list[float]:
    count = max(1, math.ceil(seconds / SEGMENT_S_MAX))
    return [seconds / count] * count


def run_scenario(
    stage: Stage, scenario: Scenario, seconds: float, *, rate_floor: float = 0.0
) -> ScenarioResult:
    """Warm up, then run `seconds` of the scenario (in segments when long) and measure it.

    `rate_floor`: a rate already measured for this scenario (the soak passes the uniform
    earn's), used when the warm-up sees less.
    """
    if scenario.clients is not None:
        stage = dataclasses.replace(stage, clients=scenario.clients)
    stage.checkpoint()
    rate = max(_warm_up(stage, scenario, seconds), rate_floor)
    stage.progress(f"  {scenario.name}: warm-up {rate:,.0f} req/s")
    runs: list[LoadRun] = []
    signed, sign_seconds = 0, 0.0
    for number, segment in enumerate(_segments(seconds)):
        for attempt in range(EXHAUSTED_RETRIES + 1):
            count = math.ceil(rate * segment * SIGN_MARGIN) + stage.clients * SIGN_PER_CLIENT_MIN
            path = stage.workdir / f"{scenario.name}-{number}.bin"
            sign_seconds += stage.pool.sign_to_file(scenario.kind, count, path)
            signed += count
            run = _run_segment(stage, scenario, path, segment)
            path.unlink()
            if run.result["exhausted_at_s"] is None or attempt == EXHAUSTED_RETRIES:
                break
            # The warm-up underestimated the rate: run the segment again with more requests.
            rate = max(rate, _rate(run)) * 2
            stage.progress(f"  {scenario.name}: ran out of requests; again with {rate:,.0f}/s")
        runs.append(run)
    return _summarise(stage, scenario, runs, rate=rate, signed=signed, sign_seconds=sign_seconds)


def _run_segment(stage: Stage, scenario: Scenario, path: Path, seconds: float) -> LoadRun:
    stop_profile = stage.profile(scenario.name, seconds) if stage.profile else None
    try:
        return run_loadgen(stage, path, seconds)
    finally:
        if stop_profile is not None:
            stop_profile()


def _summarise(
    stage: Stage,
    scenario: Scenario,
    runs: list[LoadRun],
    *,
    rate: float,
    signed: int,
    sign_seconds: float,
) -> ScenarioResult:
    outcomes: Counter[str] = Counter()
    ok_latencies: list[int] = []
    other_latencies: list[int] = []
    for run in runs:
        outcomes.update(run.result["outcomes"])
        ok_latencies += run.result["ok_latencies_us"]
        other_latencies += run.result["other_latencies_us"]
    seconds = sum(run.result["elapsed_s"] for run in runs)
    answered = sum(outcomes.values())
    ok = sum(count for outcome, count in outcomes.items() if outcome.startswith("2"))
    expected = sum(count for outcome, count in outcomes.items() if outcome in scenario.expected)
    cpu = _weighted_cpu(runs)
    samples = [
        sample for run in runs for sample in stage.monitor.rss_between(run.started_at, run.ended_at)
    ]
    exhausted = any(run.result["exhausted_at_s"] is not None for run in runs)
    return ScenarioResult(
        name=scenario.name,
        title=scenario.title,
        clients=stage.clients,
        seconds=round(seconds, 3),
        warmup_rps=round(rate, 1),
        signed=signed,
        sign_seconds=round(sign_seconds, 2),
        sent=sum(run.result["sent"] for run in runs),
        ok=ok,
        ok_rps=round(ok / max(seconds, 1e-9), 1),
        expected_rejections=expected,
        errors=sum(outcomes.values()) - ok - expected,
        outcomes=dict(sorted(outcomes.items())),
        latency_ms=percentiles_ms(ok_latencies),
        latency_all_ms=percentiles_ms(ok_latencies + other_latencies),
        cpu_percent=cpu.percent,
        cpu_ms_per_request=cpu_ms_per_item(cpu, answered),
        write_transactions_per_request=_per(sum(r.write_transactions for r in runs), answered),
        wal_bytes_per_request=_per(sum(r.wal_bytes for r in runs), answered),
        machine_busy_percent=cpu.machine_busy_percent,
        rss=rss_summary(samples),
        rss_samples=_relative(samples),
        exhausted=exhausted,
        loadgen_saturated=cpu.percent.get("loadgen", 0.0) > LOADGEN_BUSY_PERCENT_MAX,
    )


def _per(total: int, items: int) -> float | None:
    return round(total / items, 2) if items and total else None


def _weighted_cpu(runs: list[LoadRun]) -> CpuWindow:
    """CPU % over several segments, weighted by their lengths."""
    total = sum(run.cpu.seconds for run in runs) or 1e-9
    names = {name for run in runs for name in run.cpu.percent}
    percent = {
        name: round(
            sum(run.cpu.percent.get(name, 0.0) * run.cpu.seconds for run in runs) / total, 1
        )
        for name in sorted(names)
    }
    machine = sum(run.cpu.machine_busy_percent * run.cpu.seconds for run in runs) / total
    return CpuWindow(round(total, 3), percent, round(machine, 1))


def _relative(samples: list[RssSample]) -> list[tuple[float, float]]:
    if not samples:
        return []
    first = samples[0].at
    return [(round(s.at - first, 1), round(s.rss_bytes / 1024 / 1024, 1)) for s in samples]
