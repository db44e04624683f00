"""The ledger under real concurrency: many requests at once over many connections.

Every request below is its own `LedgerService.submit` (its own database transaction) and
they all run together with `asyncio.gather`, so they meet on the member row locks, the
idempotency key locks and the partner counters exactly as concurrent HTTP requests do.
Outcomes are asserted exactly: which succeed, which are refused and with what code, and
what every balance is afterwards. No request may end in a 5xx (ServiceUnavailable after
exhausted retries, InvariantViolation), and PostgreSQL must have seen no deadlock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.clock import FrozenClock
from exchange.db import create_engine
from exchange.errors import NonceReplayed
from exchange.ids import parse_hold_id, parse_transaction_id
from exchange.service import (
    Burn,
    CaptureHold,
    Command,
    Earn,
    Idempotency,
    LedgerRequest,
    LedgerService,
    NonceClaim,
    OpenHold,
    Outcome,
    Reverse,
    SignatureProof,
    VoidHold,
)
from tests.support import (
    add_partner,
    assert_ledger_verifies,
    enrol,
    fingerprint,
    post,
    submit,
    until_a_session_waits_for_a_lock,
)

POOL_SIZE = 40
DEADLOCK_STATS_WAIT_S = 5.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with room for 40 database transactions at once."""
    engine = create_engine(database_url, pool_size=POOL_SIZE)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def wide(pool: AsyncEngine, ledger: LedgerService, clock: FrozenClock) -> LedgerService:
    return LedgerService(pool, clock, points_ttl=ledger.points_ttl)


async def _all_at_once(ledger: LedgerService, requests: Sequence[LedgerRequest]) -> list[Outcome]:
    """Submit every request on its own, all concurrently; none may raise (no 5xx)."""
    results = await asyncio.gather(
        *(ledger.submit([request]) for request in requests), return_exceptions=True
    )
    raised = [result for result in results if isinstance(result, BaseException)]
    assert raised == [], raised
    return [
        outcome for result in results if not isinstance(result, BaseException) for outcome in result
    ]


def _codes(outcomes: Sequence[Outcome]) -> Counter[str]:
    """How many succeeded ("ok") and how many failed with each error code."""
    return Counter(outcome.error.code if outcome.error else "ok" for outcome in outcomes)


def _keyed(command: Command, key: str | None = None) -> LedgerRequest:
    return LedgerRequest(command, Idempotency(key or uuid.uuid4().hex, fingerprint(command)))


async def _balance(ledger: LedgerService, member_id: str) -> tuple[int, int, int]:
    balance = await ledger.read_balance(member_id)
    return balance.available, balance.held, balance.pending


async def _scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def _deadlocks(pool: AsyncEngine, engine: AsyncEngine) -> int:
    """Deadlocks PostgreSQL detected in this database. A backend reports its statistics
    when it exits, so close the pool and wait for its backends to be gone first."""
    await pool.dispose()
    async with engine.connect() as conn:
        for _ in range(int(DEADLOCK_STATS_WAIT_S / 0.05)):
            others = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            await conn.rollback()
            if others == 0:
                break
            await asyncio.sleep(0.05)
        deadlocks = await conn.scalar(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    return int(deadlocks or 0)


# -- double spend ----------------------------------------------------------------------------


async def test_concurrent_burns_never_spend_a_point_twice(
    wide: LedgerService, pool: AsyncEngine, engine: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(pool, clock, "grocer")
    member = await enrol(wide, grocer)
    await post(wide, Earn(grocer, member, "o", points=500))
    burns = [_keyed(Burn(grocer, member, 10, reference=f"basket-{i}")) for i in range(100)]
    outcomes = await _all_at_once(wide, burns)
    assert _codes(outcomes) == {"ok": 50, "insufficient_points": 50}
    assert {outcome.status_code for outcome in outcomes if outcome.error is None} == {201}
    assert await _balance(wide, member) == (0, 0, 0)
    assert await _scalar(pool, "SELECT count(*) FROM postings WHERE type = 'burn'") == 50
    totals = await assert_ledger_verifies(pool)
    assert (totals["issued"], totals["redeemed"], totals["outstanding"]) == (500, 500, 0)
    assert await _deadlocks(pool, engine) == 0


# -- no lost update --------------------------------------------------------------------------


async def test_concurrent_earns_to_one_member_all_count(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(pool, clock, "grocer")
    member = await enrol(wide, grocer)
    earns = [_keyed(Earn(grocer, member, f"order-{i}", points=i)) for i in range(1, 101)]
    outcomes = await _all_at_once(wide, earns)
    assert _codes(outcomes) == {"ok": 100}
    assert await _balance(wide, member) == (5050, 0, 0)
    liability = await _scalar(pool, "SELECT sum(liability_points) FROM partner_counters")
    assert liability == 5050
    totals = await assert_ledger_verifies(pool)
    assert (totals["issued"], totals["outstanding"], totals["lots"]) == (5050, 5050, 100)


async def test_concurrent_earns_to_many_members_keep_the_partner_counters_exact(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(pool, clock, "grocer")
    members = list(await asyncio.gather(*(enrol(wide, grocer) for _ in range(100))))
    assert len(set(members)) == 100
    earns = [
        _keyed(Earn(grocer, member, f"order-{i}", points=i + 1)) for i, member in enumerate(members)
    ]
    outcomes = await _all_at_once(wide, earns)
    assert _codes(outcomes) == {"ok": 100}
    balances = await asyncio.gather(*(_balance(wide, member) for member in members))
    assert balances == [(i + 1, 0, 0) for i in range(100)]
    liability = await _scalar(pool, "SELECT sum(liability_points) FROM partner_counters")
    assert liability == 5050
    issued_value = await _scalar(pool, "SELECT sum(issued_value) FROM partner_counters")
    assert str(issued_value) == "60.600000"  # 5050 points x 0.012
    totals = await assert_ledger_verifies(pool)
    assert (totals["issued"], totals["outstanding"], totals["members"]) == (5050, 5050, 100)


# -- everything at once ----------------------------------------------------------------------

EARNED = 200  # per earn; each member earns once from each of the three partners
HELD = 50  # per hold; two per member, opened before the rush
PRE_BURN = 40  # one burn per member before the rush
CLAWBACK = 120  # each earn: two racing reversals of 120 of 200, so exactly one fits
REFUND = 30  # the burn of 40: two racing refunds of 30, so exactly one fits
BURN, BURNS = 10, 4  # per member during the rush
NEW_HOLD, NEW_HOLDS = 10, 2  # per member during the rush
PARTIAL = 20


async def test_a_rush_of_mixed_requests_ends_in_business_outcomes_only(
    wide: LedgerService, pool: AsyncEngine, engine: AsyncEngine, clock: FrozenClock
) -> None:
    """100 holds, captures, voids, burns and reversals racing across 5 members and 3
    partners. The amounts leave every member at least 40 points in every order the
    requests may run in, so which requests win is decided only where they race for the
    same thing: one of capture/void/partial capture per hold, one of two reversals per
    original."""
    partners = [await add_partner(pool, clock, name) for name in ("grocer", "fuel", "cinema")]
    members = [await enrol(wide, partners[0]) for _ in range(5)]
    earns: dict[str, list[tuple[str, uuid.UUID]]] = {member: [] for member in members}
    holds: dict[str, list[tuple[str, uuid.UUID]]] = {member: [] for member in members}
    pre_burns: dict[str, tuple[str, uuid.UUID]] = {}
    for m, member in enumerate(members):
        for partner in partners:
            body = await post(wide, Earn(partner, member, f"order-{m}", points=EARNED))
            earns[member].append((partner, _id(parse_transaction_id, body["transaction_id"])))
        burner = partners[m % 3]
        body = await post(wide, Burn(burner, member, PRE_BURN))
        pre_burns[member] = (burner, _id(parse_transaction_id, body["transaction_id"]))
        for h in range(2):
            holder = partners[(m + h) % 3]
            body = await post(wide, OpenHold(holder, member, HELD, expires_in_s=3600))
            holds[member].append((holder, _id(parse_hold_id, body["hold_id"])))

    rush: list[LedgerRequest] = []
    for m, member in enumerate(members):
        for partner, hold_id in holds[member]:
            rush += [
                _keyed(CaptureHold(partner, hold_id)),
                _keyed(VoidHold(partner, hold_id)),
                _keyed(CaptureHold(partner, hold_id, PARTIAL)),
            ]
        for partner, earn_id in earns[member]:
            rush += [_keyed(Reverse(partner, earn_id, CLAWBACK)) for _ in range(2)]
        burner, burn_id = pre_burns[member]
        rush += [_keyed(Reverse(burner, burn_id, REFUND)) for _ in range(2)]
        rush += [_keyed(Burn(partners[(m + i) % 3], member, BURN)) for i in range(BURNS)]
        rush += [_keyed(OpenHold(partners[i], member, NEW_HOLD)) for i in range(NEW_HOLDS)]
    assert len(rush) == 100
    order = list(range(100))
    order = order[::2] + order[1::2]  # interleave, so racing requests are not neighbours
    outcomes_in_order = await _all_at_once(wide, [rush[i] for i in order])
    outcomes = [outcome for _, outcome in sorted(zip(order, outcomes_in_order, strict=True))]

    assert _codes(outcomes) == {
        "ok": 10 + 15 + 5 + 20 + 10,
        "hold_not_open": 20,
        "reversal_exceeds_original": 15 + 5,
    }
    captured: dict[str, int] = dict.fromkeys(members, 0)
    per_member = 20  # requests per member in `rush`
    for m, member in enumerate(members):
        mine = outcomes[m * per_member : (m + 1) * per_member]
        for h in range(2):
            capture, void, partial = mine[3 * h : 3 * h + 3]
            assert _codes([capture, void, partial]) == {"ok": 1, "hold_not_open": 2}
            captured[member] += HELD if capture.error is None else 0
            captured[member] += PARTIAL if partial.error is None else 0
        reversals = mine[6:12]
        for e in range(3):
            assert _codes(reversals[2 * e : 2 * e + 2]) == {"ok": 1, "reversal_exceeds_original": 1}
        assert _codes(mine[12:14]) == {"ok": 1, "reversal_exceeds_original": 1}

    for member in members:
        available = (
            3 * EARNED
            - PRE_BURN
            + REFUND
            - 3 * CLAWBACK
            - BURNS * BURN
            - NEW_HOLDS * NEW_HOLD
            - captured[member]
        )
        assert await _balance(wide, member) == (available, NEW_HOLDS * NEW_HOLD, 0)
    totals = await assert_ledger_verifies(pool)
    issued = 5 * 3 * (EARNED - CLAWBACK)
    redeemed = 5 * (PRE_BURN - REFUND + BURNS * BURN) + sum(captured.values())
    assert (totals["issued"], totals["redeemed"], totals["expired"]) == (issued, redeemed, 0)
    assert totals["outstanding"] == issued - redeemed
    assert await _deadlocks(pool, engine) == 0


def _id(parse: Any, text_id: str) -> uuid.UUID:
    parsed: uuid.UUID | None = parse(text_id)
    assert parsed is not None
    return parsed


# -- exactly once ----------------------------------------------------------------------------


async def test_one_key_sent_twenty_times_at_once_has_one_effect(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(pool, clock, "grocer")
    member = await enrol(wide, grocer)
    command = Earn(grocer, member, "order-1", points=75)
    outcomes = await _all_at_once(wide, [_keyed(command, "the-key") for _ in range(20)])
    first = [outcome for outcome in outcomes if outcome.error is None and not outcome.replayed]
    assert len(first) == 1
    replayed = [outcome for outcome in outcomes if outcome.replayed]
    in_progress = [outcome for outcome in outcomes if outcome.error is not None]
    assert len(replayed) + len(in_progress) == 19
    assert {(o.error.code, o.error.status) for o in in_progress if o.error} <= {
        ("request_in_progress", 409)
    }
    assert all((o.status_code, o.body) == (201, first[0].body) for o in replayed)
    assert await _scalar(pool, "SELECT count(*) FROM postings") == 1
    assert await _scalar(pool, "SELECT count(*) FROM idempotency_keys") == 1
    assert await _balance(wide, member) == (75, 0, 0)
    again = await submit(wide, command, key="the-key")
    assert (again.status_code, again.body, again.replayed) == (201, first[0].body, True)
    await assert_ledger_verifies(pool)


async def test_a_replay_waiting_for_its_member_does_not_hold_the_key_it_names(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    """A replayed nonce is refused before its request's key is claimed, though the nonces
    are spent by the statement that claims the keys and then waits for the member locks
    (`store.claim_and_lock`). So a replay stuck behind another transaction's member lock
    must not make a fresh request with the same key answer 409 meanwhile."""
    grocer = await add_partner(pool, clock, "grocer")
    first, second = await enrol(wide, grocer), await enrol(wide, grocer)
    proof = SignatureProof("grocer-key-1", "sig1=()", "sig1=:c2ln:", None, b"base")

    def signed(member: str, key: str, nonce: str) -> LedgerRequest:
        command = Earn(grocer, member, key, points=5)
        spent = NonceClaim(proof.key_id, nonce, clock.now())
        return LedgerRequest(command, Idempotency(key, fingerprint(command)), proof, spent)

    [original] = await wide.submit([signed(first, "key-1", "nonce-1")])
    assert original.status_code == 201
    async with pool.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM members WHERE member_id = :m FOR UPDATE"), {"m": first}
        )
        replay = asyncio.create_task(wide.submit([signed(first, "key-2", "nonce-1")]))
        for _ in range(500):  # until the replay waits for the member, or is answered
            async with pool.connect() as conn:
                if replay.done() or await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                ):
                    break
            await asyncio.sleep(0.01)
        [fresh] = await wide.submit([signed(second, "key-2", "nonce-2")])
        assert (fresh.status_code, fresh.error) == (201, None)
        await holder.rollback()
    [refused] = await replay
    assert isinstance(refused.error, NonceReplayed), refused
    assert await _scalar(pool, f"SELECT count(*) FROM postings WHERE partner_id = '{grocer}'") == 2
    await assert_ledger_verifies(pool)


# -- batches ---------------------------------------------------------------------------------


async def test_a_batch_answers_each_request_and_isolates_the_one_that_fails(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(pool, clock, "grocer")
    cinema = await add_partner(pool, clock, "cinema")
    members = [await enrol(wide, grocer) for _ in range(5)]
    requests = [
        _keyed(Earn(grocer, members[i % 5], f"order-{i}", points=100 + i)) for i in range(25)
    ]
    requests.append(_keyed(Burn(cinema, members[0], 10_000)))  # index 25: too much
    requests += [_keyed(Burn(cinema, members[i % 5], 10 + i)) for i in range(26, 50)]
    outcomes = await wide.submit(requests)

    assert len(outcomes) == 50
    failed = outcomes[25]
    assert failed.error is not None
    assert (failed.error.code, failed.error.status) == ("insufficient_points", 422)
    assert [o.status_code for i, o in enumerate(outcomes) if i != 25] == [201] * 49
    earned = Counter[str]()
    burned = Counter[str]()
    for i in range(25):
        earned[members[i % 5]] += 100 + i
    for i in range(26, 50):
        burned[members[i % 5]] += 10 + i
    for member in members:
        assert await _balance(wide, member) == (earned[member] - burned[member], 0, 0)
    # Each response carries the member's balance right after that request in the batch.
    last = {members[i % 5]: i for i in range(50) if i != 25}
    for member, index in last.items():
        body: dict[str, Any] = msgspec.json.decode(outcomes[index].body)
        assert body["balance_after"]["available"] == earned[member] - burned[member]
    assert await _scalar(pool, "SELECT count(*) FROM idempotency_keys") == 49
    totals = await assert_ledger_verifies(pool)
    assert (totals["issued"], totals["redeemed"]) == (sum(earned.values()), sum(burned.values()))


# -- the settlement barrier --------------------------------------------------------------------


async def test_a_batch_waiting_at_the_barrier_stamps_after_the_period_closed_meanwhile(
    wide: LedgerService, pool: AsyncEngine, clock: FrozenClock
) -> None:
    """Settlement closes a period (moves `closed_until` under the barrier, exclusive)
    while a batch waits for the barrier (shared). The batch's first statement enters the
    barrier and its snapshot predates the wait; the closing time must be read with a
    snapshot taken after it (`ledger_books`, a VOLATILE function). Here the members'
    points expired inside the period just closed and were not swept: the batch posts
    their expiry first, stamped at the closing time. Stamped with a closing time read
    too early, at the moment they expired, the database would refuse the whole batch as
    a change to a closed period."""
    grocer = await add_partner(pool, clock, "grocer")
    members = [await enrol(wide, grocer) for _ in range(3)]
    for member in members:
        expires = clock.now() + timedelta(hours=1)
        await post(wide, Earn(grocer, member, "old", points=7, expires_at=expires))
    clock.advance(timedelta(hours=2))  # the points expired an hour ago
    closed = clock.now() - timedelta(minutes=10)
    async with pool.connect() as settlement:
        await settlement.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": store.SETTLEMENT_BARRIER_KEY}
        )
        await settlement.execute(
            text("UPDATE ledger_state SET closed_until = :closed"), {"closed": closed}
        )
        batch = asyncio.create_task(
            wide.submit([_keyed(Earn(grocer, member, "new", points=5)) for member in members])
        )
        await until_a_session_waits_for_a_lock(pool, "the batch")
        assert not batch.done()
        await settlement.commit()
    outcomes = await batch
    assert [outcome.status_code for outcome in outcomes] == [201] * 3
    async with pool.connect() as conn:
        expiries = (
            await conn.execute(text("SELECT posted_at FROM postings WHERE type = 'expiry'"))
        ).scalars()
        assert list(expiries) == [closed] * 3
    await assert_ledger_verifies(pool)
