"""One scenario per ledger rule, with exact numbers, on real PostgreSQL.

Every test ends with `exchange verify`'s checks passing (the autouse fixture below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.ids import parse_hold_id, parse_transaction_id
from exchange.money import Money
from exchange.service import (
    Burn,
    CaptureHold,
    Earn,
    LedgerService,
    OpenHold,
    Reverse,
    VoidHold,
)
from partners.registry import PartnerChanges, update_partner
from tests.support import add_partner, assert_ledger_verifies, enrol, post, refused, submit

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
async def _verify_after(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    await assert_ledger_verifies(engine)


@pytest.fixture
async def grocer(engine: AsyncEngine, clock: FrozenClock) -> str:
    return await add_partner(engine, clock, "grocer", earn_rates={"EUR": "1.5", "GBP": "2"})


@pytest.fixture
async def cinema(engine: AsyncEngine, clock: FrozenClock) -> str:
    return await add_partner(engine, clock, "cinema", redemption_value="0.009")


@pytest.fixture
async def member(ledger: LedgerService, grocer: str) -> str:
    return await enrol(ledger, grocer)


async def _balance(ledger: LedgerService, member_id: str) -> tuple[int, int, int]:
    balance = await ledger.read_balance(member_id)
    return balance.available, balance.held, balance.pending


async def _scalar(engine: AsyncEngine, sql: str, **params: object) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


# -- earn ----------------------------------------------------------------------------------------


async def test_earn_by_points_credits_available_and_reports_balance_after(
    ledger: LedgerService, grocer: str, member: str, clock: FrozenClock
) -> None:
    body = await post(ledger, Earn(grocer, member, "order-991", points=120))
    assert body["type"] == "earn"
    assert body["points"] == 120
    assert body["reference"] == "order-991"
    assert body["partner_id"] == grocer
    assert body["balance_after"] == {"available": 120, "held": 0, "pending": 0}
    assert body["posted_at"] == "2026-11-23T10:00:00Z"
    balance = await ledger.read_balance(member)
    assert (balance.available, balance.held, balance.pending) == (120, 0, 0)
    assert [(e.points, e.expires_at) for e in balance.expiring] == [(120, clock.now() + 1095 * DAY)]


async def test_earn_by_purchase_floors_amount_times_rate(
    ledger: LedgerService, grocer: str, member: str
) -> None:
    body = await post(ledger, Earn(grocer, member, "o-1", purchase=Money(Decimal("120.99"), "EUR")))
    assert body["points"] == 181  # floor(120.99 x 1.5 = 181.485)
    gbp = await post(ledger, Earn(grocer, member, "o-2", purchase=Money(Decimal("10.49"), "GBP")))
    assert gbp["points"] == 20  # floor(10.49 x 2 = 20.98)
    assert gbp["balance_after"]["available"] == 201


async def test_earn_in_a_currency_without_rate_is_refused(
    ledger: LedgerService, grocer: str, member: str
) -> None:
    error = await refused(ledger, Earn(grocer, member, "o-1", purchase=Money(Decimal("10"), "USD")))
    assert error.code == "currency_not_supported"
    too_small = await refused(
        ledger, Earn(grocer, member, "o-2", purchase=Money(Decimal("0.50"), "EUR"))
    )
    assert too_small.code == "validation_error"  # floor(0.75) = 0 points
    assert await _balance(ledger, member) == (0, 0, 0)


async def test_pending_points_mature_at_available_at(
    ledger: LedgerService, grocer: str, member: str, clock: FrozenClock, engine: AsyncEngine
) -> None:
    body = await post(
        ledger, Earn(grocer, member, "o-1", points=100, available_at=clock.now() + 14 * DAY)
    )
    assert body["balance_after"] == {"available": 0, "held": 0, "pending": 100}
    assert (await refused(ledger, Burn(grocer, member, 1))).code == "insufficient_points"
    clock.advance(14 * DAY)
    assert await _balance(ledger, member) == (100, 0, 0)  # before any sweep
    result = await ledger.sweep()
    assert result.matured_points == 100
    assert await _scalar(engine, "SELECT count(*) FROM postings WHERE type = 'maturation'") == 1
    await post(ledger, Burn(grocer, member, 100))


async def test_promotional_points_expire_even_before_the_sweep(
    ledger: LedgerService, grocer: str, member: str, clock: FrozenClock, engine: AsyncEngine
) -> None:
    await post(ledger, Earn(grocer, member, "promo", points=200, expires_at=clock.now() + 10 * DAY))
    await post(ledger, Earn(grocer, member, "order", points=50))
    await post(ledger, Burn(grocer, member, 30))  # from the promo lot, which expires first
    clock.advance(10 * DAY)
    assert await _balance(ledger, member) == (50, 0, 0)
    error = await refused(ledger, Burn(grocer, member, 51))
    assert error.code == "insufficient_points"
    result = await ledger.sweep()
    assert result.expired_points == 170
    breakage = await _scalar(
        engine,
        "SELECT sum(amount) FROM entries WHERE account = 'breakage' AND owner = :p",
        p=grocer,
    )
    assert breakage == 170
    posted_at = await _scalar(engine, "SELECT posted_at FROM postings WHERE type = 'expiry'")
    assert posted_at == clock.now(), "expiry is stamped when the lot expired"


async def test_expiry_dates_are_validated(
    ledger: LedgerService, grocer: str, member: str, clock: FrozenClock
) -> None:
    later = await refused(
        ledger, Earn(grocer, member, "x", points=1, expires_at=clock.now() + 1096 * DAY)
    )
    assert later.code == "validation_error"
    before = await refused(
        ledger,
        Earn(
            grocer,
            member,
            "x",
            points=1,
            available_at=clock.now() + 5 * DAY,
            expires_at=clock.now() + 4 * DAY,
        ),
    )
    assert before.code == "validation_error"
    past = await refused(ledger, Earn(grocer, member, "x", points=1, expires_at=clock.now()))
    assert past.code == "validation_error"


# -- burn ----------------------------------------------------------------------------------------


async def test_burn_draws_soonest_expiring_lots_first_ties_oldest_first(
    ledger: LedgerService,
    grocer: str,
    cinema: str,
    member: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    await post(ledger, Earn(grocer, member, "late", points=100, expires_at=clock.now() + 30 * DAY))
    await post(
        ledger, Earn(grocer, member, "soon-old", points=100, expires_at=clock.now() + 10 * DAY)
    )
    await post(
        ledger, Earn(grocer, member, "soon-new", points=50, expires_at=clock.now() + 10 * DAY)
    )
    body = await post(ledger, Burn(cinema, member, 120, reference="ticket-1"))
    assert body["balance_after"]["available"] == 130
    drawn = await _scalar(
        engine,
        "SELECT string_agg(p.reference || ':' || a.points, ',' ORDER BY p.reference) "
        "FROM allocations a JOIN lots l ON l.lot_id = a.lot_id "
        "JOIN postings p ON p.posting_id = l.earn_id "
        "WHERE a.posting_id = :burn AND a.kind = 'draw'",
        burn=parse_transaction_id(body["transaction_id"]),
    )
    assert drawn == "soon-new:20,soon-old:100"
    balance = await ledger.read_balance(member)
    assert [(e.points, (e.expires_at - clock.now()).days) for e in balance.expiring] == [
        (30, 10),
        (100, 30),
    ]


async def test_insufficient_points_changes_nothing(
    ledger: LedgerService, grocer: str, member: str, engine: AsyncEngine
) -> None:
    await post(ledger, Earn(grocer, member, "o", points=100))
    postings_before = await _scalar(engine, "SELECT count(*) FROM postings")
    error = await refused(ledger, Burn(grocer, member, 101))
    assert error.code == "insufficient_points"
    assert error.status == 422
    assert "100 points available, 101 asked" in error.detail
    assert await _scalar(engine, "SELECT count(*) FROM postings") == postings_before
    assert await _balance(ledger, member) == (100, 0, 0)


async def test_unknown_member_is_not_found(ledger: LedgerService, grocer: str) -> None:
    error = await refused(ledger, Earn(grocer, "mem_nobody", "o", points=1))
    assert error.code == "member_not_found"
    assert error.status == 404


# -- holds ---------------------------------------------------------------------------------------


async def test_hold_capture_in_part_releases_the_rest(
    ledger: LedgerService, grocer: str, cinema: str, member: str
) -> None:
    await post(ledger, Earn(grocer, member, "o", points=1000))
    hold = await post(ledger, OpenHold(cinema, member, 300, reference="till-7"))
    assert hold["status"] == "open"
    assert hold["expires_at"] == "2026-11-23T10:15:00Z"
    assert await _balance(ledger, member) == (700, 300, 0)
    hold_id = parse_hold_id(hold["hold_id"])
    assert hold_id is not None
    captured = await post(ledger, CaptureHold(cinema, hold_id, 200))
    assert captured["status"] == "captured"
    assert captured["captured_points"] == 200
    assert captured["transaction_id"].startswith("txn_")
    assert await _balance(ledger, member) == (800, 0, 0)
    again = await refused(ledger, CaptureHold(cinema, hold_id, 1))
    assert (again.code, again.status) == ("hold_not_open", 409)
    burn_id = parse_transaction_id(captured["transaction_id"])
    assert burn_id is not None


async def test_void_and_automatic_expiry_of_holds(
    ledger: LedgerService, grocer: str, cinema: str, member: str, clock: FrozenClock
) -> None:
    await post(ledger, Earn(grocer, member, "o", points=500))
    voided = await post(ledger, OpenHold(cinema, member, 100))
    void_id = parse_hold_id(voided["hold_id"])
    assert void_id is not None
    assert (await post(ledger, VoidHold(cinema, void_id)))["status"] == "voided"
    assert (await refused(ledger, VoidHold(cinema, void_id))).code == "hold_not_open"
    expiring = await post(ledger, OpenHold(cinema, member, 200, expires_in_s=60))
    expiring_id = parse_hold_id(expiring["hold_id"])
    assert expiring_id is not None
    assert await _balance(ledger, member) == (300, 200, 0)
    clock.advance(timedelta(seconds=60))
    assert await _balance(ledger, member) == (500, 0, 0)  # released before any sweep
    error = await refused(ledger, CaptureHold(cinema, expiring_id))
    assert error.code == "hold_not_open"
    assert "expired" in error.detail


async def test_another_partners_hold_is_not_found(
    ledger: LedgerService, grocer: str, cinema: str, member: str
) -> None:
    await post(ledger, Earn(grocer, member, "o", points=500))
    hold = await post(ledger, OpenHold(cinema, member, 100))
    hold_id = parse_hold_id(hold["hold_id"])
    assert hold_id is not None
    assert (await refused(ledger, CaptureHold(grocer, hold_id))).code == "hold_not_found"
    assert (await refused(ledger, VoidHold(grocer, hold_id))).status == 404


async def test_captured_hold_points_survive_their_lot_expiring(
    ledger: LedgerService,
    grocer: str,
    cinema: str,
    member: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    await post(
        ledger,
        Earn(grocer, member, "promo", points=100, expires_at=clock.now() + timedelta(minutes=5)),
    )
    hold = await post(ledger, OpenHold(cinema, member, 80))
    hold_id = parse_hold_id(hold["hold_id"])
    assert hold_id is not None
    clock.advance(timedelta(minutes=10))  # lot expired; the hold (15 min) is still open
    assert await _balance(ledger, member) == (0, 80, 0)
    captured = await post(ledger, CaptureHold(cinema, hold_id, 50))
    assert captured["captured_points"] == 50
    # The 30 points released from the hold return to a lot that has expired: breakage.
    assert await _balance(ledger, member) == (0, 0, 0)
    breakage = await _scalar(engine, "SELECT sum(amount) FROM entries WHERE account = 'breakage'")
    assert breakage == 20 + 30


# -- reversals -----------------------------------------------------------------------------------


async def test_partial_reversals_are_bounded_by_the_original(
    ledger: LedgerService, grocer: str, cinema: str, member: str
) -> None:
    earn = await post(ledger, Earn(grocer, member, "o", points=120))
    earn_id = parse_transaction_id(earn["transaction_id"])
    assert earn_id is not None
    first = await post(ledger, Reverse(grocer, earn_id, 50, reference="return-1"))
    assert first["type"] == "earn_reversal"
    assert first["reverses"] == earn["transaction_id"]
    assert first["balance_after"]["available"] == 70
    too_much = await refused(ledger, Reverse(grocer, earn_id, 71))
    assert too_much.code == "reversal_exceeds_original"
    rest = await post(ledger, Reverse(grocer, earn_id))
    assert rest["points"] == 70
    assert (await refused(ledger, Reverse(grocer, earn_id))).code == "reversal_exceeds_original"
    reversal_id = parse_transaction_id(first["transaction_id"])
    assert reversal_id is not None
    assert (await refused(ledger, Reverse(grocer, reversal_id))).code == "not_reversible"
    assert (await refused(ledger, Reverse(cinema, earn_id))).code == "transaction_not_found"


async def test_clawback_goes_negative_and_later_earns_repay_first(
    ledger: LedgerService, grocer: str, cinema: str, member: str
) -> None:
    earn = await post(ledger, Earn(grocer, member, "o", points=100))
    await post(ledger, Burn(cinema, member, 80))
    earn_id = parse_transaction_id(earn["transaction_id"])
    assert earn_id is not None
    clawback = await post(ledger, Reverse(grocer, earn_id))
    assert clawback["balance_after"]["available"] == -80
    error = await refused(ledger, Burn(cinema, member, 1))
    assert error.code == "insufficient_points"
    assert "negative" in error.detail
    assert (await post(ledger, Earn(grocer, member, "o2", points=50)))["balance_after"][
        "available"
    ] == -30
    assert (await post(ledger, Earn(grocer, member, "o3", points=100)))["balance_after"][
        "available"
    ] == 70
    await post(ledger, Burn(cinema, member, 70))


async def test_earn_reversal_shortfall_comes_from_other_lots_first(
    ledger: LedgerService,
    engine: AsyncEngine,
    clock: FrozenClock,
    grocer: str,
    cinema: str,
    member: str,
) -> None:
    fuel = await add_partner(engine, clock, "fuel")
    earn = await post(ledger, Earn(grocer, member, "g", points=100))
    await post(ledger, Earn(fuel, member, "f", points=50))
    await post(ledger, Burn(cinema, member, 120))  # grocer's lot 100 (older), fuel's 20
    earn_id = parse_transaction_id(earn["transaction_id"])
    assert earn_id is not None
    body = await post(ledger, Reverse(grocer, earn_id))
    assert body["balance_after"]["available"] == -70  # 30 from fuel's lot, 70 owed


async def test_pending_earn_reversed_in_the_return_window(
    ledger: LedgerService, grocer: str, member: str, clock: FrozenClock
) -> None:
    earn = await post(
        ledger, Earn(grocer, member, "o", points=100, available_at=clock.now() + 30 * DAY)
    )
    earn_id = parse_transaction_id(earn["transaction_id"])
    assert earn_id is not None
    body = await post(ledger, Reverse(grocer, earn_id, 40))
    assert body["balance_after"] == {"available": 0, "held": 0, "pending": 60}
    clock.advance(30 * DAY)
    assert await _balance(ledger, member) == (60, 0, 0)


async def test_burn_reversal_restores_lots_with_their_expiry(
    ledger: LedgerService, grocer: str, cinema: str, member: str, clock: FrozenClock
) -> None:
    await post(ledger, Earn(grocer, member, "a", points=100, expires_at=clock.now() + 30 * DAY))
    await post(ledger, Earn(grocer, member, "b", points=100, expires_at=clock.now() + 60 * DAY))
    burn = await post(ledger, Burn(cinema, member, 150))  # a: 100, b: 50
    burn_id = parse_transaction_id(burn["transaction_id"])
    assert burn_id is not None
    refund = await post(ledger, Reverse(cinema, burn_id, 120, reference="refund-1"))
    assert refund["type"] == "burn_reversal"
    assert refund["balance_after"]["available"] == 170
    balance = await ledger.read_balance(member)
    assert [(e.points, (e.expires_at - clock.now()).days) for e in balance.expiring] == [
        (70, 30),
        (100, 60),
    ]
    rest = await post(ledger, Reverse(cinema, burn_id))
    assert rest["points"] == 30


async def test_refund_into_an_expired_lot_expires_at_once(
    ledger: LedgerService,
    grocer: str,
    cinema: str,
    member: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    await post(ledger, Earn(grocer, member, "a", points=100, expires_at=clock.now() + 10 * DAY))
    burn = await post(ledger, Burn(cinema, member, 100))
    clock.advance(11 * DAY)
    burn_id = parse_transaction_id(burn["transaction_id"])
    assert burn_id is not None
    refund = await post(ledger, Reverse(cinema, burn_id))
    assert refund["balance_after"]["available"] == 0
    expired = await _scalar(engine, "SELECT sum(points) FROM postings WHERE type = 'expiry'")
    assert expired == 100


# -- exactly once --------------------------------------------------------------------------------


async def test_idempotency_replays_refuses_reuse_and_failed_requests_keep_their_key(
    ledger: LedgerService, grocer: str, member: str, engine: AsyncEngine
) -> None:
    first = await submit(ledger, Earn(grocer, member, "o", points=10), key="k-1")
    again = await submit(ledger, Earn(grocer, member, "o", points=10), key="k-1")
    assert (again.status_code, again.body, again.replayed) == (201, first.body, True)
    reused = await submit(ledger, Earn(grocer, member, "o", points=11), key="k-1")
    assert reused.error is not None
    assert reused.error.code == "idempotency_key_reused"
    failed = await submit(ledger, Burn(grocer, member, 500), key="k-2")
    assert failed.error is not None
    await post(ledger, Earn(grocer, member, "more", points=990))
    retried = await submit(ledger, Burn(grocer, member, 500), key="k-2")
    assert retried.error is None
    assert not retried.replayed
    assert await _balance(ledger, member) == (500, 0, 0)


async def test_credit_limit_caps_unsettled_issuance(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    limited = await add_partner(engine, clock, "limited", credit_limit="1.00")
    member = await enrol(ledger, limited)
    earn = await post(ledger, Earn(limited, member, "a", points=83))  # 0.996
    error = await refused(ledger, Earn(limited, member, "b", points=1))  # 1.008 > 1.00
    assert error.code == "credit_limit_exceeded"
    earn_id = parse_transaction_id(earn["transaction_id"])
    assert earn_id is not None
    await post(ledger, Reverse(limited, earn_id, 1))  # frees 0.012
    await post(ledger, Earn(limited, member, "b", points=1))


async def test_postings_keep_the_prices_in_force_when_made(
    ledger: LedgerService, grocer: str, member: str, engine: AsyncEngine, clock: FrozenClock
) -> None:
    await post(ledger, Earn(grocer, member, "before", points=10))
    await update_partner(engine, clock, grocer, PartnerChanges(issue_price=Decimal("0.015")))
    await post(ledger, Earn(grocer, member, "after", points=10))
    prices = await _scalar(
        engine,
        "SELECT string_agg(reference || '=' || unit_price, ',' ORDER BY reference) FROM postings",
    )
    assert prices == "after=0.015000,before=0.012000"
