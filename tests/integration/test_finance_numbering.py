"""Document numbers stay gap-free and unique under concurrent approvals (real PostgreSQL).

Several runs are approved at once (asyncio.gather over a pool of real connections), one
of them failing half-way and rolling back: every series still counts 1..N with no gap
and no duplicate, which a SEQUENCE (nextval survives a rollback) would not give.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.operators import OperatorIdentity
from exchange.service import Burn, Earn, LedgerService
from settlement import events
from settlement import finance as finance_module
from settlement.finance import FinanceService
from settlement.journal import ChartOfAccounts
from settlement.service import SettlementService
from tests.support import add_partner, enrol, post

DAYS = 6
START = datetime(2026, 11, 10, tzinfo=UTC)
FINANCE = OperatorIdentity("opt_finance", "closer", "finance")


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql)))


async def _runs(engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService) -> list[str]:
    """One run per day; each has two invoices (grocer, fuel) and a credit note (cinema)."""
    clock.set(START - timedelta(hours=1))
    for partner_id in ("grocer", "fuel", "cinema"):
        await add_partner(engine, clock, partner_id)
    shopper = await enrol(ledger, "grocer")
    settlement = SettlementService(engine, clock, ledger)
    run_ids = []
    for day in range(DAYS):
        clock.set(START + timedelta(days=day, hours=10))
        await post(ledger, Earn("grocer", shopper, f"g-{day}", points=10_000))
        await post(ledger, Earn("fuel", shopper, f"f-{day}", points=5_000))
        await post(ledger, Burn("cinema", shopper, 2_000, f"c-{day}"))
        period_end = START + timedelta(days=day + 1)
        clock.set(period_end + timedelta(minutes=5))
        run_ids.append((await settlement.run_settlement(period_end)).run.run_id)
    return run_ids


async def test_concurrent_approvals_number_every_series_without_gaps(
    engine: AsyncEngine,
    clock: FrozenClock,
    ledger: LedgerService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_ids = await _runs(engine, clock, ledger)
    finance = FinanceService(engine, clock, ChartOfAccounts())
    # One approval fails after drawing its first number: its numbers must roll back with it.
    real_ready = events.statement_ready
    doomed = run_ids[2]

    async def failing_once(conn: Any, partner_id: str, run_id: str, *args: Any, **kw: Any) -> str:
        if run_id == doomed and partner_id == "fuel":
            raise RuntimeError("crash after drawing numbers")
        return await real_ready(conn, partner_id, run_id, *args, **kw)

    monkeypatch.setattr(finance_module.events, "statement_ready", failing_once)
    outcomes = await asyncio.gather(
        *(finance.approve(run_id, FINANCE) for run_id in run_ids), return_exceptions=True
    )
    failed = [run_ids[i] for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [doomed], outcomes
    monkeypatch.setattr(finance_module.events, "statement_ready", real_ready)
    # Concurrent retries of the failed one and re-approvals of the others: no new numbers.
    await asyncio.gather(*(finance.approve(run_id, FINANCE) for run_id in [doomed, *run_ids]))

    documents = await _rows(
        engine,
        "SELECT series, year, sequence, number, run_id, partner_id FROM settlement_documents",
    )
    for series, expected in (("INV", 2 * DAYS), ("CN", DAYS)):
        sequences = sorted(row.sequence for row in documents if row.series == series)
        assert sequences == list(range(1, expected + 1)), series
    assert len({row.number for row in documents}) == len(documents) == 3 * DAYS
    assert {(row.run_id, row.partner_id) for row in documents} == {
        (run_id, partner) for run_id in run_ids for partner in ("grocer", "fuel", "cinema")
    }
    assert {row.number[:8] for row in documents} == {"INV-2026", "CN-2026-"}
    counters = await _rows(engine, "SELECT series, last_value FROM document_counters")
    assert sorted((row.series, row.last_value) for row in counters) == [
        ("CN", DAYS),
        ("INV", 2 * DAYS),
    ]
    # One statement.ready event per document, none for the rolled-back attempt.
    events_rows = await _rows(engine, "SELECT data->>'document_id' AS d FROM webhook_outbox")
    assert sorted(row.d for row in events_rows) == sorted(
        row.document_id
        for row in await _rows(engine, "SELECT document_id FROM settlement_documents")
    )
    approvals = await _rows(engine, "SELECT run_id FROM settlement_approvals")
    assert sorted(row.run_id for row in approvals) == sorted(run_ids)


async def test_documents_and_approvals_refuse_update_and_delete(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    run_ids = await _runs(engine, clock, ledger)
    await FinanceService(engine, clock, ChartOfAccounts()).approve(run_ids[0], FINANCE)
    for statement in (
        "UPDATE settlement_documents SET net = 0",
        "DELETE FROM settlement_documents",
        "UPDATE settlement_approvals SET approved_by = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE payments CASCADE",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    documents = await _rows(engine, "SELECT count(*) AS n FROM settlement_documents")
    assert documents[0].n == 3


async def test_simultaneous_first_approvals_of_one_run_issue_its_documents_once(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    run_ids = await _runs(engine, clock, ledger)
    finance = FinanceService(engine, clock, ChartOfAccounts())
    others = [OperatorIdentity(f"opt_{n}", f"closer-{n}", "finance") for n in range(4)]

    approved = await asyncio.gather(*(finance.approve(run_ids[0], who) for who in others))

    assert len({(a.approval.approved_by, a.approval.approved_at) for a in approved}) == 1
    documents = await _rows(engine, "SELECT number FROM settlement_documents")
    assert sorted(row.number for row in documents) == [
        "CN-2026-000001",
        "INV-2026-000001",
        "INV-2026-000002",
    ]
    audit = await _rows(engine, "SELECT actor FROM audit_log")
    assert [row.actor for row in audit] == [approved[0].approval.approved_by]
