"""Settlement use cases: run a settlement, read runs, the liabilities report.

A run, step by step (`run_settlement`):

    1. sweep            post what fell due (expiry first of all) at the moment it fell due
    2. close            move ledger_state.closed_until to period_end under the exclusive
                        settlement barrier, in its own short database transaction: once it
                        commits, no posting can be stamped inside the period any more
    3. compute + store  in ONE REPEATABLE READ database transaction: measure the period,
                        settle it, insert the run with its lines and cross-brand flows,
                        and add each partner's exact issuance to its settled_issuance

Crash safety: steps 1 and 2 are idempotent and step 3 is atomic, so a crash anywhere
leaves either no run or the whole run; running again finds the journal already closed
(nothing new can have entered the period) and computes the identical result. Concurrent
attempts converge: UNIQUE(period_end) and UNIQUE(period_start) let exactly one commit,
and the others look again and return it (or refuse with period_closed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange import metrics
from exchange.clock import Clock, utc
from exchange.errors import (
    InvariantViolation,
    NotARunPeriodEnd,
    ServiceUnavailable,
    Unprocessable,
)
from exchange.ids import RUN_ID_SHAPE
from exchange.logs import get_logger
from exchange.retry import retry_conflicts
from exchange.service import LedgerService
from exchange.store import close_journal_until, driver_of
from settlement import rollforward, store
from settlement.engine import BEGINNING_OF_TIME, Period, Settlement, settle
from settlement.errors import PeriodClosed, SettlementNotFound
from settlement.rollforward import RollForwardReport

__all__ = ["RUNS_PAGE_MAX", "RunResult", "SettlementService", "run_id_for"]

RETRIES_MAX = 5
RETRY_BACKOFF_S = 0.01
RUNS_PAGE_MAX = 200
_log = get_logger("settlement")


def _log_collision(attempt: int, collision: BaseException) -> None:
    _log.info("settlement_run_collision", attempt=attempt, sqlstate=str(collision))


def run_id_for(period_end: datetime) -> str:
    """Runs are named by the moment they close: one period_end, one run, one id, so a
    rerun after a crash produces the same id as the attempt that failed."""
    moment = utc(period_end)
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return f"stl_{moment:%Y%m%dT%H%M%S}{fraction}Z"


@dataclass(frozen=True, slots=True)
class RunResult:
    run: store.StoredRun
    created: bool  # False: a run for that period_end already existed


class SettlementService:
    """Settlement over one database, one clock, and the ledger whose sweep it runs."""

    def __init__(self, engine: AsyncEngine, clock: Clock, ledger: LedgerService) -> None:
        self.engine = engine
        self.clock = clock
        self.ledger = ledger

    async def run_settlement(
        self, period_end: datetime, *, created_by: str = "operator", sweep: bool = True
    ) -> RunResult:
        """Settle `[latest run's period_end, period_end)`; see the module docstring."""
        period_end = utc(period_end)
        now = self.clock.now()
        if period_end > now:
            raise Unprocessable(
                f"period_end {period_end:%Y-%m-%dT%H:%M:%SZ} is in the future; "
                "only time that has passed can be settled."
            )
        if period_end <= BEGINNING_OF_TIME:
            raise Unprocessable("period_end must be after 1970-01-01T00:00:00Z.")
        async with self.engine.connect() as conn:
            existing = await self._existing_or_check(conn, period_end)
        if existing is not None:
            return RunResult(existing, created=False)
        started = time.perf_counter()
        if sweep:
            await self.ledger.sweep()
        async with self.engine.begin() as conn:
            await close_journal_until(await driver_of(conn), period_end)
        result = await retry_conflicts(
            lambda: self._compute_and_store(period_end, created_by),
            conflict=store.RunCollision,
            attempts=RETRIES_MAX,
            backoff_s=RETRY_BACKOFF_S,
            exhausted=ServiceUnavailable("Settlement kept colliding with concurrent runs; retry."),
            on_retry=_log_collision,
        )
        metrics.SETTLEMENT_RUN_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _existing_or_check(
        self, conn: AsyncConnection, period_end: datetime
    ) -> store.StoredRun | None:
        """The run for `period_end` if there is one; PeriodClosed if a later run exists."""
        found = await store.find_run(conn, period_end)
        if found is not None:
            return await store.load_run(conn, found.run_id)
        latest = await store.latest_run(conn)
        if latest is not None and period_end < latest.period_end:
            raise PeriodClosed(
                f"Settlement has already run until {latest.period_end:%Y-%m-%dT%H:%M:%SZ} "
                f"({latest.run_id}); an earlier period_end cannot be settled again."
            )
        return None

    async def _compute_and_store(self, period_end: datetime, created_by: str) -> RunResult:
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                with store.translate_errors():
                    existing = await self._existing_or_check(conn, period_end)
                    if existing is not None:
                        return RunResult(existing, created=False)
                    if await store.closed_until(conn) < period_end:
                        raise InvariantViolation("the journal is not closed until period_end")
                    latest = await store.latest_run(conn)
                    period = Period(latest.period_end if latest else BEGINNING_OF_TIME, period_end)
                    figures = await store.read_period(conn, period)
                    settlement = settle(
                        figures,
                        previous_outstanding_end=latest.controls.outstanding_end
                        if latest
                        else None,
                    )
                    run_id = run_id_for(period_end)
                    await store.insert_run(
                        conn,
                        run_id,
                        settlement,
                        created_at=self.clock.now(),
                        created_by=created_by,
                    )
                    await store.add_settled_issuance(conn, settlement.lines)
                    stored = await store.load_run(conn, run_id)
        if stored is None:  # pragma: no cover - just inserted in the same transaction
            raise InvariantViolation(f"run {run_id} vanished")
        self._log_run(stored)
        return RunResult(stored, created=True)

    @staticmethod
    def _log_run(run: store.StoredRun) -> None:
        header = run.header
        fields = {
            "run_id": header.run_id,
            "period_start": header.period_start.isoformat(),
            "period_end": header.period_end.isoformat(),
            "partners": len(run.settlement.lines),
            "issued": header.controls.issued,
            "redeemed": header.controls.redeemed,
            "expired": header.controls.expired,
        }
        if header.reconciled:
            _log.info("settlement_run_stored", **fields)
        else:
            # Stored all the same (a run is never silently dropped): finance must look.
            _log.error(
                "settlement_unreconciled",
                failed_checks=header.checks.failed(),
                outstanding_start=header.controls.outstanding_start,
                outstanding_end=header.controls.outstanding_end,
                **fields,
            )

    # -- reads --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> store.StoredRun:
        if not RUN_ID_SHAPE.fullmatch(run_id):
            raise SettlementNotFound("No settlement run has that id.")
        async with self.engine.connect() as conn:
            run = await store.load_run(conn, run_id)
        if run is None:
            raise SettlementNotFound(f"No settlement run {run_id}.")
        return run

    async def list_runs(
        self, *, limit: int, after: str | None = None
    ) -> tuple[list[store.RunHeader], str | None]:
        """Runs newest first, a page at a time; `after` is the previous page's `next`
        (the last run_id it showed). Returns the page and the next cursor (or None)."""
        limit = max(1, min(limit, RUNS_PAGE_MAX))
        async with self.engine.connect() as conn:
            before = None
            if after is not None:
                if not RUN_ID_SHAPE.fullmatch(after):
                    raise Unprocessable("after is not a run_id this API returned.")
                cursor = await store.load_header(conn, after)
                if cursor is None:
                    raise Unprocessable("after is not a run_id this API returned.")
                before = cursor.period_end
            headers = await store.list_runs(conn, limit=limit + 1, before=before)
        page = headers[:limit]
        return page, (page[-1].run_id if len(headers) > limit else None)

    async def latest_run(self) -> store.RunHeader | None:
        async with self.engine.connect() as conn:
            return await store.latest_run(conn)

    async def earliest_posting(self) -> datetime | None:
        async with self.engine.connect() as conn:
            return await store.earliest_posting(conn)

    async def liabilities_report(
        self,
    ) -> tuple[datetime, list[store.LiabilityRow], store.LiabilityReconciliation]:
        """The v1 report and its reconciling items, in one consistent snapshot."""
        now = self.clock.now()
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                rows = await store.liabilities(conn, now)
                return now, rows, await store.liability_reconciliation(conn, now)

    async def liabilities(self) -> tuple[datetime, list[store.LiabilityRow]]:
        """Outstanding points per issuer now, in one consistent snapshot."""
        now = self.clock.now()
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return now, await store.liabilities(conn, now)

    async def roll_forward(self, as_of: datetime) -> RollForwardReport:
        """The liability roll-forward of the run ending at `as_of`, in one snapshot."""
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                run = await store.find_run(conn, utc(as_of))
                if run is not None:
                    rows, issuers = await store.read_movements(
                        conn, run.period_start, run.period_end
                    )
        if run is None:
            raise NotARunPeriodEnd(
                f"No settlement run ends at {utc(as_of):%Y-%m-%dT%H:%M:%SZ}; as_of must be the "
                "period_end of a run (GET /v1/settlements lists them)."
            )
        return rollforward.report(run, rows, issuers)

    async def open_period(self) -> Settlement:
        """What the next run would show if the period closed now: a preview from one
        snapshot. Nothing is closed or stored, and postings keep arriving, so the figures
        are 'so far' (expiries the sweep has not posted yet are not in them)."""
        now = self.clock.now()
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                latest = await store.latest_run(conn)
                start = latest.period_end if latest is not None else BEGINNING_OF_TIME
                # Periods are half-open; "so far" includes a posting stamped at `now`.
                end = max(start, now + timedelta(microseconds=1))
                figures = await store.read_period(conn, Period(start, end))
        previous = latest.controls.outstanding_end if latest is not None else None
        return settle(figures, previous_outstanding_end=previous)

    async def line_postings(
        self, run_id: str, partner_id: str, *, limit: int
    ) -> tuple[store.StoredRun, list[store.PeriodPosting]]:
        """A run and the postings behind one partner's line of it (oldest first)."""
        run = await self.get_run(run_id)
        period = run.settlement.period
        async with self.engine.connect() as conn:
            rows = await store.period_postings(
                conn, partner_id, period.start, period.end, limit=limit
            )
        return run, rows
