"""What the processes cost: CPU time per group over a window, and the server's RSS each second.

A group is a root process and all its descendants, looked up afresh at every reading, so
uvicorn workers and PostgreSQL backends that start later are counted. CPU is user + system
time. A background thread reads every process of every group twice a second and keeps the
last CPU time it saw per process, so a process that exits inside a window (a pgbench
connection's backend, say) still counts, up to its last reading; a window's figure is, per
process, the last time seen at its end minus the time seen at its start (zero if unborn).
The same thread samples the total RSS of the server's processes once a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

__all__ = [
    "AUTOVACUUM",
    "CpuReading",
    "CpuWindow",
    "Group",
    "Monitor",
    "RssSample",
    "cpu_ms_per_item",
    "rss_summary",
]

MIB = 1024 * 1024
SAMPLE_INTERVAL_S = 1.0
CPU_INTERVAL_S = 0.5
AUTOVACUUM = "postgres_autovacuum"  # a part of "postgres", not a group of its own

_Key = tuple[int, float]  # (pid, create_time): a pid may be reused


@dataclass(frozen=True, slots=True)
class Group:
    """A named process tree: `root` and its descendants."""

    name: str
    root: int

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []


@dataclass(frozen=True, slots=True)
class CpuReading:
    at: float
    per_group: Mapping[str, Mapping[_Key, float]]
    machine_busy_s: float
    machine_total_s: float


@dataclass(frozen=True, slots=True)
class CpuWindow:
    """CPU used per group over a window, as % of one core (200 = two cores busy)."""

    seconds: float
    percent: dict[str, float]
    machine_busy_percent: float  # of all cores together


@dataclass(frozen=True, slots=True)
class RssSample:
    at: float  # time.monotonic()
    rss_bytes: int
    processes: int


def _cpu_seconds(processes: Iterable[psutil.Process]) -> dict[_Key, float]:
    seconds: dict[_Key, float] = {}
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                seconds[(process.pid, process.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return seconds


def _autovacuum(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """PostgreSQL's autovacuum workers (their process titles say so)."""
    found = []
    for process in processes:
        try:
            if "autovacuum worker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@dataclass
class Monitor:
    """CPU readings on demand, and a background thread keeping CPU and RSS samples."""

    groups: list[Group]
    server: Group
    samples: list[RssSample] = field(default_factory=list)
    _seen: dict[str, dict[_Key, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def read_cpu(self, extra: Iterable[Group] = ()) -> CpuReading:
        """CPU seconds per process of every group (exited ones at their last reading)."""
        with self._lock:
            self._refresh([*self.groups, *extra])
            per_group = {name: dict(seen) for name, seen in self._seen.items()}
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        total = busy + machine.idle + machine.iowait + getattr(machine, "steal", 0.0)
        return CpuReading(time.monotonic(), per_group, busy, total)

    def _refresh(self, groups: Iterable[Group]) -> None:
        for group in groups:
            processes = group.processes()
            self._seen.setdefault(group.name, {}).update(_cpu_seconds(processes))
            if group.name == "postgres":
                # A part of PostgreSQL's figure, reported apart: vacuum work in a window
                # (WAL, CPU) is not the requests' own cost.
                seen = self._seen.setdefault(AUTOVACUUM, {})
                seen.update(_cpu_seconds(_autovacuum(processes)))

    @staticmethod
    def window(start: CpuReading, end: CpuReading) -> CpuWindow:
        seconds = max(end.at - start.at, 1e-9)
        percent: dict[str, float] = {}
        for name, now in end.per_group.items():
            before = start.per_group.get(name, {})
            used = sum(value - before.get(key, 0.0) for key, value in now.items())
            percent[name] = round(100.0 * used / seconds, 1)
        total = max(end.machine_total_s - start.machine_total_s, 1e-9)
        machine = 100.0 * (end.machine_busy_s - start.machine_busy_s) / total
        cores = psutil.cpu_count() or 1
        # CPU used by nothing we started: other users of the machine perturb the figures.
        ours = sum(value for name, value in percent.items() if name != AUTOVACUUM)
        percent["other"] = round(max(0.0, machine * cores - ours), 1)
        return CpuWindow(round(seconds, 3), percent, round(machine, 1))

    def start_sampling(self) -> None:
        self._thread = threading.Thread(target=self._sample_forever, name="monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def rss_between(self, start: float, end: float) -> list[RssSample]:
        return [sample for sample in list(self.samples) if start <= sample.at <= end]

    def _sample_forever(self) -> None:
        next_rss = 0.0
        while not self._stop.is_set():
            with self._lock:
                self._refresh(self.groups)
            if time.monotonic() >= next_rss:
                next_rss = time.monotonic() + SAMPLE_INTERVAL_S
                self._sample_rss()
            self._stop.wait(CPU_INTERVAL_S)

    def _sample_rss(self) -> None:
        total, count = 0, 0
        for process in self.server.processes():
            try:
                total += process.memory_info().rss
                count += 1
            except psutil.Error:
                continue
        if count:
            self.samples.append(RssSample(time.monotonic(), total, count))


def cpu_ms_per_item(window: CpuWindow, items: int) -> dict[str, float]:
    """CPU milliseconds per request (or transaction) for each group over a window."""
    if items <= 0:
        return {}
    return {
        name: round(percent / 100 * window.seconds * 1000 / items, 3)
        for name, percent in window.percent.items()
        if name != "other"
    }


def rss_summary(samples: list[RssSample]) -> dict[str, float | int | None]:
    """Start, end and max of the server's total RSS (MiB) over a window of samples."""
    if not samples:
        return {"start_mib": None, "end_mib": None, "max_mib": None, "samples": 0}
    values = [sample.rss_bytes / MIB for sample in samples]
    return {
        "start_mib": round(values[0], 1),
        "end_mib": round(values[-1], 1),
        "max_mib": round(max(values), 1),
        "samples": len(values),
    }
