"""The in-server scheduler: the sweep, scheduled settlement, and housekeeping jobs.

Every `scheduler_interval_s` each server process wakes and calls `run_tick`, which:

    1. takes the scheduler's PostgreSQL advisory lock (try-lock: if another process
       holds it, that process is doing this tick's work and this one skips);
    2. sweeps (expiry, maturation, holds past their expiry), so breakage lands in the
       period in which it fell due;
    3. settles every cycle boundary that has passed since the latest run, oldest first
       (catching up after downtime), at most `RUNS_PER_TICK_MAX` per tick;
    4. runs the registered housekeeping jobs (e.g. the gateway's nonce and session purge).

Exactly once: the advisory lock keeps two processes from doing the work side by side,
and a run's UNIQUE(period_end) makes a second attempt at a period return the first run.

Cycle boundaries are local midnight in EXCHANGE_SETTLEMENT_TIMEZONE (default UTC): every
day (daily), every Monday (weekly), the 1st of each month (monthly); each is stored and
shown as the UTC instant it falls on (Europe/Riga: 22:00 UTC in winter, 21:00 in summer).
With no run yet, the first boundary settled is the first one after
the cycle boundary at or before the earliest posting (never a run per day since 1970).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.background import finish_or_cancel
from exchange.clock import Clock, utc
from exchange.config import SettlementCycle
from exchange.logs import get_logger
from exchange.store import is_unavailable
from settlement import store
from settlement.errors import PeriodClosed
from settlement.service import SettlementService

__all__ = [
    "BACKOFF_S_MAX",
    "RUNS_PER_TICK_MAX",
    "SCHEDULER_LOCK_KEY",
    "UTC_ZONE",
    "HousekeepingJob",
    "Scheduler",
    "TickReport",
    "boundary_at_or_before",
    "due_boundaries",
    "next_boundary",
    "run_tick",
    "tick_delay_s",
]

SCHEDULER_LOCK_KEY = 0x5E77_1E00_0002
RUNS_PER_TICK_MAX = 100
BACKOFF_S_MAX = 300.0  # the longest wait between ticks while the database is away
STOP_GRACE_S = 10.0  # how long a stopping server waits for a tick in progress
_log = get_logger("settlement.schedule")

# A housekeeping job gets the tick's time; what it returns is logged.
HousekeepingJob = Callable[[datetime], Awaitable[object]]


# -- cycle boundaries (pure) ----------------------------------------------------------------

UTC_ZONE = ZoneInfo("UTC")


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, in UTC. Where a DST change skips midnight
    (fold 0 of a gap), this is the first local time after the gap: still the day's start."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _floor_day(moment: datetime, cycle: SettlementCycle, zone: ZoneInfo) -> date:
    day = utc(moment).astimezone(zone).date()
    if cycle == "daily":
        return day
    if cycle == "weekly":
        return day - timedelta(days=day.weekday())  # Monday is weekday 0
    return day.replace(day=1)


def _following_day(day: date, cycle: SettlementCycle) -> date:
    if cycle == "daily":
        return day + timedelta(days=1)
    if cycle == "weekly":
        return day + timedelta(days=7)
    if day.month == 12:
        return day.replace(year=day.year + 1, month=1)
    return day.replace(month=day.month + 1)


def boundary_at_or_before(
    moment: datetime, cycle: SettlementCycle, zone: ZoneInfo = UTC_ZONE
) -> datetime:
    """The latest cycle boundary <= moment: local midnight in `zone`, as a UTC instant."""
    return _local_midnight(_floor_day(moment, cycle, zone), zone)


def next_boundary(moment: datetime, cycle: SettlementCycle, zone: ZoneInfo = UTC_ZONE) -> datetime:
    """The earliest cycle boundary strictly after moment."""
    return _local_midnight(_following_day(_floor_day(moment, cycle, zone), cycle), zone)


def due_boundaries(
    after: datetime,
    now: datetime,
    cycle: SettlementCycle,
    *,
    limit: int = RUNS_PER_TICK_MAX,
    zone: ZoneInfo = UTC_ZONE,
) -> list[datetime]:
    """Boundaries in (after, now], oldest first, at most `limit`."""
    found: list[datetime] = []
    boundary = next_boundary(after, cycle, zone)
    while boundary <= now and len(found) < limit:
        found.append(boundary)
        boundary = next_boundary(boundary, cycle, zone)
    return found


def tick_delay_s(interval_s: float, failures: int) -> float:
    """The wait before the next tick: the interval, doubled per consecutive failed tick
    (the database is away), at most `BACKOFF_S_MAX` but never less than the interval."""
    if failures == 0:
        return interval_s
    backoff_s = interval_s * (1 << min(failures, 16))
    return max(interval_s, min(backoff_s, BACKOFF_S_MAX))


# -- one tick ---------------------------------------------------------------------------------


@dataclass
class TickReport:
    """What one tick did. `ran` is False when another process held the scheduler lock."""

    ran: bool = False
    swept_members: int = 0
    settled: list[str] = field(default_factory=list)
    failed_jobs: int = 0


async def _settle_due(
    settlement: SettlementService,
    now: datetime,
    cycle: SettlementCycle,
    report: TickReport,
    zone: ZoneInfo,
) -> None:
    latest = await settlement.latest_run()
    if latest is not None:
        after = latest.period_end
    else:
        earliest = await settlement.earliest_posting()
        if earliest is None:
            return  # an empty ledger: nothing to settle yet
        after = boundary_at_or_before(earliest, cycle, zone)
    for boundary in due_boundaries(after, now, cycle, zone=zone):
        try:
            result = await settlement.run_settlement(boundary, created_by="scheduler", sweep=False)
        except PeriodClosed:
            return  # someone settled past this boundary meanwhile; next tick looks again
        report.settled.append(result.run.run_id)


async def _housekeeping(jobs: Sequence[HousekeepingJob], now: datetime, report: TickReport) -> None:
    for job in jobs:
        try:
            outcome = await job(now)
        except Exception:  # one failing job must not stop the others or the scheduler
            report.failed_jobs += 1
            _log.exception("housekeeping_failed", job=getattr(job, "__name__", repr(job)))
        else:
            _log.debug(
                "housekeeping_done", job=getattr(job, "__name__", repr(job)), outcome=outcome
            )


async def run_tick(
    engine: AsyncEngine,
    clock: Clock,
    settlement: SettlementService,
    cycle: SettlementCycle,
    jobs: Sequence[HousekeepingJob] = (),
    *,
    zone: ZoneInfo = UTC_ZONE,
) -> TickReport:
    """One scheduler tick (see the module docstring). Plain and awaitable: tests drive it
    with a FrozenClock, two of them at once to check that the work happens once."""
    report = TickReport()
    async with engine.connect() as lock_conn, lock_conn.begin():
        # A transaction-level lock, held by this open (idle) database transaction for the
        # whole tick: released at its end or when the connection dies, never leaked.
        if not await store.try_scheduler_lock(lock_conn, SCHEDULER_LOCK_KEY):
            return report
        report.ran = True
        now = clock.now()
        swept = await settlement.ledger.sweep()
        report.swept_members = swept.members
        await _settle_due(settlement, now, cycle, report, zone)
        await _housekeeping(jobs, now, report)
    if report.settled:
        _log.info("scheduled_settlement", runs=report.settled)
    return report


class Scheduler:
    """Runs `run_tick` every `interval_s` in a background task of the server process."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        clock: Clock,
        settlement: SettlementService,
        cycle: SettlementCycle,
        interval_s: float,
        housekeeping: Sequence[HousekeepingJob] = (),
        zone: ZoneInfo = UTC_ZONE,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settlement = settlement
        self.cycle: SettlementCycle = cycle
        self.interval_s = interval_s
        self.zone = zone  # cut-offs fall at local midnight here (EXCHANGE_SETTLEMENT_TIMEZONE)
        self.housekeeping: list[HousekeepingJob] = list(housekeeping)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def add_housekeeping(self, job: HousekeepingJob) -> None:
        """Register a job run on every tick (under the scheduler lock, after settlement)."""
        self.housekeeping.append(job)

    async def tick(self) -> TickReport:
        return await run_tick(
            self.engine,
            self.clock,
            self.settlement,
            self.cycle,
            tuple(self.housekeeping),
            zone=self.zone,
        )

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="exchange-scheduler")

    async def stop(self) -> None:
        """Let a tick in progress finish; one still running after STOP_GRACE_S is
        cancelled (its database transaction rolls back; the next start runs it again)."""
        task, self._task = self._task, None
        self._stop.set()
        if task is not None:
            await finish_or_cancel([task], grace_s=STOP_GRACE_S, worker="scheduler")

    async def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():  # for the life of the process, until stop()
            try:
                await self.tick()
            except Exception as exc:  # a failed tick is logged and retried later
                failures += 1
                if is_unavailable(exc):  # an outage: expected, no stack trace per tick
                    _log.warning("scheduler_tick_failed", reason=type(exc).__name__)
                else:
                    _log.exception("scheduler_tick_failed")
            else:
                failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick_delay_s(self.interval_s, failures))
