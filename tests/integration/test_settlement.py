"""Settlement runs on real PostgreSQL, with exact expected numbers.

Each scenario posts through the ledger service on the frozen clock, settles with
`SettlementService`, and checks every figure a finance team would read. Every test ends
with `exchange verify`'s checks passing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.errors import Unprocessable
from exchange.ids import parse_hold_id, parse_transaction_id
from exchange.money import format_amount
from exchange.service import Burn, CaptureHold, Earn, LedgerService, OpenHold, Reverse
from exchange.store import liability_by_issuer
from partners.registry import PartnerChanges, update_partner
from settlement import reports, store
from settlement import service as service_module
from settlement.engine import BEGINNING_OF_TIME, Line, Period, settle
from settlement.errors import PeriodClosed, SettlementNotFound
from settlement.service import RunResult, SettlementService
from tests.support import add_partner, assert_ledger_verifies, enrol, post, refused

DAY = timedelta(days=1)
NOV24 = datetime(2026, 11, 24, tzinfo=UTC)
NOV25 = datetime(2026, 11, 25, tzinfo=UTC)
NOV26 = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.fixture(autouse=True)
async def _verify_after(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    await assert_ledger_verifies(engine)


@pytest.fixture
def settlement(engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService) -> SettlementService:
    return SettlementService(engine, clock, ledger)


def _line(run: store.StoredRun, partner_id: str) -> Line:
    [line] = [line for line in run.settlement.lines if line.partner_id == partner_id]
    return line


def _money(line: Line) -> tuple[str, str, str]:
    """The three amounts as the API and the CSV write them."""
    return (
        format_amount(line.issuance_charge, line.currency),
        format_amount(line.redemption_credit, line.currency),
        format_amount(line.net, line.currency),
    )


async def _settle(
    settlement: SettlementService, clock: FrozenClock, period_end: datetime
) -> store.StoredRun:
    if clock.now() < period_end:
        clock.set(period_end + timedelta(hours=1))
    result = await settlement.run_settlement(period_end)
    return result.run


async def _scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


# -- the worked example (domain.md), through the service ---------------------------------------


async def test_worked_example_nets_and_controls(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    for partner_id in ("grocer", "fuel", "cinema"):
        await add_partner(engine, clock, partner_id)
    shopper, driver = await enrol(ledger, "grocer"), await enrol(ledger, "fuel")
    await post(ledger, Earn("grocer", shopper, "basket", points=1_000_000))
    await post(ledger, Earn("fuel", driver, "tank", points=400_000))
    await post(ledger, Burn("grocer", shopper, 300_000))
    await post(ledger, Burn("cinema", shopper, 500_000))
    await post(ledger, Burn("fuel", driver, 200_000))

    run = await _settle(settlement, clock, NOV24)

    assert run.run_id == "stl_20261124T000000Z"
    assert run.settlement.period == Period(BEGINNING_OF_TIME, NOV24)
    grocer, fuel, cinema = (_line(run, p) for p in ("grocer", "fuel", "cinema"))
    assert (grocer.issued_points, grocer.redeemed_points) == (1_000_000, 300_000)
    assert _money(grocer) == ("12000.00", "3000.00", "9000.00")
    assert (fuel.issued_points, fuel.redeemed_points) == (400_000, 200_000)
    assert _money(fuel) == ("4800.00", "2000.00", "2800.00")
    assert (cinema.issued_points, cinema.redeemed_points) == (0, 500_000)
    assert _money(cinema) == ("0.00", "5000.00", "-5000.00")
    assert sum(line.net for line in run.settlement.lines) == Decimal("6800")
    assert [(f.issuer_id, f.redeemer_id, f.points) for f in run.settlement.cross_brand] == [
        ("fuel", "fuel", 200_000),
        ("grocer", "cinema", 500_000),
        ("grocer", "grocer", 300_000),
    ]
    controls = run.header.controls
    assert (controls.issued, controls.redeemed, controls.expired, controls.reversed) == (
        1_400_000,
        1_000_000,
        0,
        0,
    )
    assert (controls.outstanding_start, controls.outstanding_end) == (0, 400_000)
    assert run.header.reconciled
    # The exact issuance is handed over to settled_issuance (for credit limits).
    settled = await _scalar(
        engine, "SELECT settled_issuance FROM partners WHERE partner_id = 'grocer'"
    )
    assert settled == Decimal("12000")


# -- prices, reversals, rounding, currencies ---------------------------------------------------


async def test_price_change_mid_period_keeps_each_postings_price(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=1000))  # at 0.012
    await post(ledger, Burn("grocer", member, 100))  # at 0.010
    clock.advance(timedelta(hours=2))
    await update_partner(
        engine,
        clock,
        "grocer",
        PartnerChanges(issue_price=Decimal("0.015"), redemption_value=Decimal("0.008")),
    )
    await post(ledger, Earn("grocer", member, "o-2", points=1000))  # at 0.015
    await post(ledger, Burn("grocer", member, 100))  # at 0.008

    line = _line(await _settle(settlement, clock, NOV24), "grocer")

    assert (line.issued_points, line.redeemed_points) == (2000, 200)
    assert line.issuance_charge_exact == Decimal("27")  # 12.00 + 15.00
    assert line.redemption_credit_exact == Decimal("1.8")  # 1.00 + 0.80
    assert _money(line) == ("27.00", "1.80", "25.20")


async def test_reversal_of_an_earn_from_a_closed_period_counts_now_at_the_original_price(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "grocer")
    earned = await post(ledger, Earn("grocer", member, "o-1", points=1000))
    burned = await post(ledger, Burn("cinema", member, 300))
    first = await _settle(settlement, clock, NOV24)
    assert _money(_line(first, "grocer")) == ("12.00", "0.00", "12.00")

    await update_partner(engine, clock, "grocer", PartnerChanges(issue_price=Decimal("0.020")))
    await update_partner(engine, clock, "cinema", PartnerChanges(redemption_value=Decimal("0.5")))
    earn_id = parse_transaction_id(earned["transaction_id"])
    burn_id = parse_transaction_id(burned["transaction_id"])
    assert earn_id is not None
    assert burn_id is not None
    await post(ledger, Reverse("grocer", earn_id, points=400))
    await post(ledger, Reverse("cinema", burn_id, points=100))
    second = await _settle(settlement, clock, NOV25)

    grocer, cinema = _line(second, "grocer"), _line(second, "cinema")
    assert (grocer.earned_points, grocer.earn_reversed_points, grocer.issued_points) == (
        0,
        400,
        -400,
    )
    assert _money(grocer) == ("-4.80", "0.00", "-4.80")  # at the original 0.012
    assert (cinema.burned_points, cinema.burn_reversed_points, cinema.redeemed_points) == (
        0,
        100,
        -100,
    )
    assert _money(cinema) == ("0.00", "-1.00", "1.00")  # at the original 0.010
    assert [(f.issuer_id, f.redeemer_id, f.points) for f in second.settlement.cross_brand] == [
        ("grocer", "cinema", -100)
    ]
    controls = second.header.controls
    assert (controls.issued, controls.redeemed, controls.reversed) == (-400, -100, 500)
    assert (controls.outstanding_start, controls.outstanding_end) == (700, 400)
    assert second.header.reconciled
    # The closed run never changes.
    again = await settlement.get_run(first.run_id)
    assert again.settlement == first.settlement
    assert _line(again, "grocer").earn_reversed_points == 0


async def test_rounding_is_half_even_once_and_net_comes_from_exact_values(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    # 2 x 0.0125 = 0.025 -> 0.02 and 6 x 0.0125 = 0.075 -> 0.08 (ties to even).
    await add_partner(engine, clock, "two", issue_price="0.0125", redemption_value="0.0125")
    await add_partner(engine, clock, "six", issue_price="0.0125")
    # issuance 0.025 -> 0.02, redemption 2 x 0.0075 = 0.015 -> 0.02, but the net is
    # round(0.025 - 0.015 = 0.010) = 0.01, not 0.02 - 0.02.
    await add_partner(engine, clock, "mixed", issue_price="0.0125", redemption_value="0.0075")
    member = await enrol(ledger, "two")
    await post(ledger, Earn("two", member, "o-1", points=2))
    await post(ledger, Earn("six", member, "o-2", points=6))
    await post(ledger, Earn("mixed", member, "o-3", points=2))
    await post(ledger, Burn("mixed", member, 2))
    await post(ledger, Burn("two", member, 2))

    run = await _settle(settlement, clock, NOV24)

    two, six, mixed = (_line(run, p) for p in ("two", "six", "mixed"))
    assert two.issuance_charge_exact == Decimal("0.025")
    assert _money(two) == ("0.02", "0.02", "0.00")
    assert _money(six) == ("0.08", "0.00", "0.08")
    assert mixed.net_exact == Decimal("0.01")
    assert _money(mixed) == ("0.02", "0.02", "0.01")
    view = reports.run_view(run)
    [mixed_view] = [line for line in view.lines if line.partner_id == "mixed"]
    assert mixed_view.exact.issuance_charge == "0.025"
    assert mixed_view.exact.redemption_credit == "0.015"
    assert mixed_view.exact.net == "0.01"
    assert mixed_view.net.amount == "0.01"


async def test_partners_settle_in_their_own_currencies(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(
        engine, clock, "pub", currency="GBP", issue_price="0.011", redemption_value="0.009"
    )
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10_000))
    await post(ledger, Earn("pub", member, "pint", points=5_000))
    await post(ledger, Burn("pub", member, 12_000))  # soonest-expiring first: grocer's lot

    run = await _settle(settlement, clock, NOV24)

    grocer, pub = _line(run, "grocer"), _line(run, "pub")
    assert (grocer.currency, _money(grocer)) == ("EUR", ("120.00", "0.00", "120.00"))
    assert (pub.currency, _money(pub)) == ("GBP", ("55.00", "108.00", "-53.00"))
    view = reports.run_view(run)
    assert {(line.partner_id, line.net.currency) for line in view.lines} == {
        ("grocer", "EUR"),
        ("pub", "GBP"),
    }
    assert [(f.issuer_id, f.redeemer_id, f.points) for f in run.settlement.cross_brand] == [
        ("grocer", "pub", 10_000),
        ("pub", "pub", 2_000),
    ]
    assert run.header.reconciled


async def test_a_partner_suspended_mid_period_still_settles(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=5000))
    await update_partner(engine, clock, "grocer", PartnerChanges(status="suspended"))
    assert (await refused(ledger, Earn("grocer", member, "o-2", points=1))).code == (
        "partner_suspended"
    )
    await post(ledger, Burn("cinema", member, 1000))  # its points stay spendable elsewhere

    run = await _settle(settlement, clock, NOV24)

    assert _money(_line(run, "grocer")) == ("60.00", "0.00", "60.00")
    assert _money(_line(run, "cinema")) == ("0.00", "10.00", "-10.00")
    assert run.header.reconciled


async def test_breakage_is_attributed_to_the_issuer_in_the_period_it_expired(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "cinema")
    promo_expiry = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    await post(ledger, Earn("grocer", member, "promo", points=500, expires_at=promo_expiry))
    await post(ledger, Earn("cinema", member, "ticket", points=300))
    await post(ledger, Burn("cinema", member, 200))  # from the promo lot (expires first)
    first = await _settle(settlement, clock, NOV24)
    assert _line(first, "grocer").expired_points == 0

    # Nobody touches the member: only the settlement run's sweep posts the expiry, and
    # stamps it at 12:00 on the 24th, inside the second period.
    clock.set(NOV25 + timedelta(hours=6))
    second = await _settle(settlement, clock, NOV25)

    grocer, cinema = _line(second, "grocer"), _line(second, "cinema")
    assert (grocer.expired_points, cinema.expired_points) == (300, 0)
    assert _money(grocer) == ("0.00", "0.00", "0.00")  # paid at issue; breakage is kept
    controls = second.header.controls
    assert (controls.expired, controls.outstanding_start, controls.outstanding_end) == (
        300,
        600,
        300,
    )
    assert second.header.reconciled
    posted_at = await _scalar(engine, "SELECT posted_at FROM postings WHERE type = 'expiry'")
    assert posted_at == promo_expiry


async def test_captured_holds_settle_as_burns(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=1000))
    hold = await post(ledger, OpenHold("cinema", member, 400))
    hold_id = parse_hold_id(hold["hold_id"])
    assert hold_id is not None
    await post(ledger, CaptureHold("cinema", hold_id, points=250))
    await post(ledger, OpenHold("cinema", member, 100))  # still open at the cut-off

    run = await _settle(settlement, clock, NOV24)

    assert _line(run, "cinema").redeemed_points == 250
    assert [(f.issuer_id, f.redeemer_id, f.points) for f in run.settlement.cross_brand] == [
        ("grocer", "cinema", 250)
    ]
    assert run.header.controls.outstanding_end == 750  # 650 available + 100 held
    assert run.header.reconciled


# -- running, rerunning, crashing --------------------------------------------------------------


async def test_same_period_end_returns_the_same_run_and_earlier_is_period_closed(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=100))
    clock.set(NOV26)
    first = await settlement.run_settlement(NOV25)
    assert first.created
    again = await settlement.run_settlement(NOV25)
    assert not again.created
    assert again.run.run_id == first.run.run_id
    assert again.run.settlement == first.run.settlement
    with pytest.raises(PeriodClosed) as closed:
        await settlement.run_settlement(NOV24)
    assert (closed.value.status, closed.value.code) == (409, "period_closed")
    with pytest.raises(Unprocessable):
        await settlement.run_settlement(NOV26 + timedelta(seconds=1))  # the future
    with pytest.raises(SettlementNotFound):
        await settlement.get_run("stl_nope")


async def test_a_crash_after_closing_the_journal_reruns_to_the_identical_result(
    engine: AsyncEngine,
    clock: FrozenClock,
    ledger: LedgerService,
    settlement: SettlementService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "cinema")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10_000))
    await post(ledger, Burn("cinema", member, 4_000))
    clock.set(NOV24 + timedelta(hours=1))

    real_insert = store.insert_run
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await real_insert(*args, **kwargs)  # written, then the process "dies"
        if calls == 1:
            raise RuntimeError("power cut")

    monkeypatch.setattr(store, "insert_run", crash_once)
    with pytest.raises(RuntimeError, match="power cut"):
        await settlement.run_settlement(NOV24)

    # Nothing of the run survived, but the journal is closed until the cut-off.
    assert await _scalar(engine, "SELECT count(*) FROM settlement_runs") == 0
    assert await _scalar(engine, "SELECT count(*) FROM settlement_lines") == 0
    assert await _scalar(engine, "SELECT sum(settled_issuance) FROM partners") == 0
    assert await _scalar(engine, "SELECT closed_until FROM ledger_state") == NOV24
    # A posting made meanwhile falls into the next period.
    await post(ledger, Earn("grocer", member, "o-2", points=7))

    result = await settlement.run_settlement(NOV24)

    assert result.created
    run = result.run
    assert run.run_id == "stl_20261124T000000Z"
    assert _money(_line(run, "grocer")) == ("120.00", "0.00", "120.00")
    assert _money(_line(run, "cinema")) == ("0.00", "40.00", "-40.00")
    assert (run.header.controls.outstanding_end, run.header.reconciled) == (6_000, True)
    assert await _scalar(engine, "SELECT sum(settled_issuance) FROM partners") == Decimal("120")
    # And it is what measuring the period afresh gives.
    async with engine.connect() as conn:
        figures = await store.read_period(conn, run.settlement.period)
    fresh = settle(figures, previous_outstanding_end=None)
    assert fresh.lines == run.settlement.lines
    assert fresh.cross_brand == run.settlement.cross_brand
    assert fresh.controls == run.header.controls


async def test_concurrent_runs_converge_on_one_run_and_never_overlap(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=100))
    clock.set(NOV26 + timedelta(hours=1))

    same = await asyncio.gather(*(settlement.run_settlement(NOV25) for _ in range(3)))
    assert {result.run.run_id for result in same} == {"stl_20261125T000000Z"}
    assert sorted(result.created for result in same) == [False, False, True]

    later = datetime(2026, 11, 25, 12, tzinfo=UTC)
    outcomes = await asyncio.gather(
        settlement.run_settlement(later), settlement.run_settlement(NOV26), return_exceptions=True
    )
    # Either both chain ([25th, 25th noon), [noon, 26th)) or the 26th won first and the
    # earlier cut-off is refused; never two runs starting at the same moment.
    assert all(isinstance(o, RunResult | PeriodClosed) for o in outcomes), outcomes
    runs = await _scalar(engine, "SELECT count(*) FROM settlement_runs")
    chained = await _scalar(
        engine,
        "SELECT count(*) FROM settlement_runs r JOIN settlement_runs p "
        "ON p.period_end = r.period_start",
    )
    assert chained == runs - 1  # every run but the first starts where another ended
    assert await _scalar(engine, "SELECT sum(settled_issuance) FROM partners") == Decimal("1.2")


async def test_computing_a_run_does_not_free_credit_limit_headroom(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    """Contract v1.1 §8 replaced v1's rule (headroom returned when a run was computed):
    the run's net keeps counting until the partner pays it (tests/http/test_finance_api.py
    follows it through approval and payment)."""
    await add_partner(engine, clock, "grocer", issue_price="0.01", credit_limit="10.00")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=1000))  # exposure 10.00
    assert (await refused(ledger, Earn("grocer", member, "o-2", points=1))).code == (
        "credit_limit_exceeded"
    )
    await _settle(settlement, clock, NOV24)
    assert await _scalar(
        engine, "SELECT receivable_open FROM partners WHERE partner_id = 'grocer'"
    ) == Decimal("10")
    assert (await refused(ledger, Earn("grocer", member, "o-3", points=1))).code == (
        "credit_limit_exceeded"
    )


# -- a run that does not reconcile -------------------------------------------------------------


class _Recorder:
    """Stands in for the service's structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))


async def test_a_change_inside_a_closed_period_makes_the_next_run_unreconciled(
    engine: AsyncEngine,
    clock: FrozenClock,
    ledger: LedgerService,
    settlement: SettlementService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=100))
    await _settle(settlement, clock, NOV24)
    # Tamper: bypass the closed-period guard and slip a complete, self-consistent earn
    # (posting, entries, lot, counters) into the period that was already settled.
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE postings DISABLE TRIGGER postings_open_period"))
        for sql in _TAMPERED_EARN:
            await conn.execute(
                text(sql), {"member": member, "at": datetime(2026, 11, 23, 12, tzinfo=UTC)}
            )
        await conn.execute(text("ALTER TABLE postings ENABLE TRIGGER postings_open_period"))
    await assert_ledger_verifies(engine)  # the journal itself is consistent

    logs = _Recorder()
    monkeypatch.setattr(service_module, "_log", logs)
    run = await _settle(settlement, clock, NOV25)

    assert not run.header.reconciled
    assert run.header.checks.failed() == ["continuity"]
    controls = run.header.controls
    assert (controls.outstanding_start, controls.outstanding_end) == (105, 105)
    assert [(level, event) for level, event, _ in logs.lines] == [
        ("error", "settlement_unreconciled")
    ]
    assert logs.lines[0][2]["failed_checks"] == ["continuity"]
    stored = await settlement.get_run(run.run_id)
    assert not stored.header.reconciled
    rows = reports.run_csv(stored).splitlines()[1:]
    assert len(rows) == 1
    assert rows[0].split(",")[3] == "false"


_TAMPERED_EARN = (
    "INSERT INTO postings (posting_id, type, member_id, partner_id, points, unit_price,"
    " currency, posted_at) VALUES ('00000000-0000-7000-8000-000000000001', 'earn', :member,"
    " 'grocer', 5, 0.012, 'EUR', :at)",
    "INSERT INTO entries (posting_id, line, account, owner, amount, posted_at) VALUES"
    " ('00000000-0000-7000-8000-000000000001', 0, 'issued', 'grocer', -5,"
    " :at),"
    " ('00000000-0000-7000-8000-000000000001', 1, 'available', :member, 5,"
    " :at)",
    "INSERT INTO lots (lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,"
    " available_at, expires_at, matured, created_at) VALUES"
    " ('00000000-0000-7000-8000-000000000002', :member, 'grocer',"
    " '00000000-0000-7000-8000-000000000001', 5, 5, 0.012, :at,"
    " CAST(:at AS timestamptz) + interval '1095 days', true, :at)",
    "INSERT INTO partner_counters (partner_id, shard, issued_value, liability_points,"
    " liability_value) VALUES ('grocer', 15, 0.06, 5, 0.06) ON CONFLICT (partner_id, shard)"
    " DO UPDATE SET issued_value = partner_counters.issued_value + 0.06,"
    " liability_points = partner_counters.liability_points + 5,"
    " liability_value = partner_counters.liability_value + 0.06",
)


# -- liabilities -------------------------------------------------------------------------------


async def test_liabilities_value_and_ageing_by_expiry(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService, settlement: SettlementService
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "pub", currency="GBP", issue_price="0.02")
    member = await enrol(ledger, "grocer")
    t0 = clock.now()
    for points, days in ((70, 1), (100, 12), (200, 62), (300, 202)):
        await post(
            ledger, Earn("grocer", member, f"o-{days}", points=points, expires_at=t0 + days * DAY)
        )
    await post(ledger, Earn("grocer", member, "o-default", points=400))  # 1095 days
    await post(ledger, Earn("pub", member, "pint", points=1000, expires_at=t0 + 40 * DAY))
    clock.advance(2 * DAY)  # the 70-point lot has expired, swept or not
    await post(ledger, OpenHold("pub", member, 50))  # reserved from the 100-point lot

    as_of, rows = await settlement.liabilities()
    view = reports.liabilities_view(as_of, rows)

    grocer, pub = view.partners
    assert grocer.partner_id == "grocer"
    assert (grocer.outstanding_points, grocer.held_points) == (1000, 50)
    assert (grocer.value.amount, grocer.value.currency) == ("12.00", "EUR")
    ageing = grocer.ageing
    assert [
        (bucket.points, bucket.value.amount)
        for bucket in (
            ageing.within_30_days,
            ageing.within_90_days,
            ageing.within_365_days,
            ageing.later,
        )
    ] == [(100, "1.20"), (200, "2.40"), (300, "3.60"), (400, "4.80")]
    assert (pub.outstanding_points, pub.value.amount, pub.ageing.within_90_days.points) == (
        1000,
        "20.00",
        1000,
    )
    assert [(t.currency, t.outstanding_points, t.value.amount) for t in view.totals] == [
        ("EUR", 1000, "12.00"),
        ("GBP", 1000, "20.00"),
    ]
    # The sweep posting the expiry changes nothing, and the ledger's counters (lots only,
    # swept) agree with the report less what open holds reserve.
    await ledger.sweep()
    as_of, rows = await settlement.liabilities()
    assert reports.liabilities_view(as_of, rows) == view
    async with engine.connect() as conn:
        counters = await liability_by_issuer(conn)
    assert counters["grocer"] == (950, Decimal("11.4"))
