"""The real ledger and an in-memory model of the contract, driven side by side.

A hypothesis `RuleBasedStateMachine` sends earns, burns, holds, captures, voids, reversals,
operator adjustments (four eyes), member-to-member transfers (`MembersService`, with
small limits) and replays to `LedgerService` on its own PostgreSQL
database (one per example), moves the clock and sweeps; `tests.property.model` predicts
every outcome. After every step:

- the trial balance: `exchange verify` finds nothing, and
  issued - redeemed - expired + adjusted == outstanding, each figure exactly the model's;
- every member's balance (available, held, pending, expiring) is the model's;
- a balance is negative only for a member an earn reversal found spent;
- every idempotency key had at most one effect (postings per type, keys stored);
- the stored sub-ledger is the model's: every lot's remaining points and maturity (and
  every transferred lot's member, issuer, expiry and points), every hold's status, every
  member's debt (this is what catches a wrong lot being drawn on
  long before it shows in a balance).

Every response is checked too: status, error code, points, hold status, and the
`balance_after` of each transaction.

Hypothesis's state machines are synchronous, so the test owns one event loop and runs
each step on it; the test function is a plain function, so no other loop is running.
The CI default is 40 examples of up to 40 steps (about 20 s on 2 cores);
LEDGER_MACHINE_EXAMPLES and LEDGER_MACHINE_STEPS run more (250 x 60 and 150 x 100 have
been run clean).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar, TypeVar

import asyncpg
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine
from exchange.embedded import EmbeddedPostgres
from exchange.errors import ExchangeError
from exchange.ids import parse_hold_id, parse_transaction_id
from exchange.members.service import MembersService
from exchange.schemas import AdjustmentCreate
from exchange.service import (
    AdjustmentService,
    Approver,
    Burn,
    CaptureHold,
    Command,
    Earn,
    Idempotency,
    LedgerService,
    OpenHold,
    Reverse,
    VoidHold,
)
from exchange.verify import verify_ledger
from tests.property.model import HoldState, MemberState, Model, Refused, Txn
from tests.support import add_partner, enrol, post, submit

T = TypeVar("T")

TEMPLATE = "exchange_template"  # the migrated template database tests/conftest.py makes

START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POINTS_TTL = timedelta(days=1095)
PARTNERS = ("grocer", "fuel", "cinema")
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
# Few distinct offsets, so that lots and holds often fall due at the same moment.
AVAILABLE_IN = (None, timedelta(seconds=30), 5 * MINUTE, HOUR, DAY, 5 * DAY)
# After available_at (or now); zero is refused: expiry must be later than availability.
EXPIRES_IN = (None, timedelta(0), MINUTE, 10 * MINUTE, HOUR, DAY, 3 * DAY, 10 * DAY)
HOLD_EXPIRES_IN_S = (1, 60, 600, 900, 3600, 86_400)
ADVANCE_BY = (
    timedelta(seconds=1),
    timedelta(seconds=30),
    MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    HOUR,
    DAY,
    3 * DAY,
    10 * DAY,
)

SETTINGS = settings(
    max_examples=int(os.environ.get("LEDGER_MACHINE_EXAMPLES", "40")),
    stateful_step_count=int(os.environ.get("LEDGER_MACHINE_STEPS", "40")),
    deadline=None,
    database=None,  # nothing written to .hypothesis/; every run is bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TRANSFER_MAX, TRANSFER_30D_MAX = 250, 600  # small, so that the limits are reached

# Amounts of one scale, so that a burn or a hold often spans several lots.
points = st.integers(min_value=1, max_value=300)
small = st.integers(min_value=1, max_value=60)
spend = small | points
some_points = st.none() | spend
index = st.integers(min_value=0, max_value=50)  # recent first: -1 - index % len


@dataclass
class Harness:
    """The event loop the whole machine runs on, and the session's PostgreSQL server."""

    loop: asyncio.AbstractEventLoop
    postgres: EmbeddedPostgres

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def create_database(self) -> str:
        name = f"machine_{uuid.uuid4().hex[:16]}"
        admin = await asyncpg.connect(self.postgres.url("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE} STRATEGY FILE_COPY')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.postgres.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class Sent:
    """A keyed request, how the model applies it, and the response it got if it succeeded."""

    command: Command
    key: str
    apply: Callable[[Model], object]
    status_code: int = 0
    body: bytes = b""


class LedgerMachine(RuleBasedStateMachine):
    harness: ClassVar[Harness | None] = None

    def __init__(self) -> None:
        super().__init__()
        if self.harness is None:
            raise RuntimeError("run LedgerMachine through test_ledger_agrees_with_the_model")
        self.h = self.harness
        self.database = self.h.run(self.h.create_database())
        self.engine = create_engine(self.h.postgres.url(self.database), pool_size=2)
        self.clock = FrozenClock(START)
        self.ledger = LedgerService(self.engine, self.clock, points_ttl=POINTS_TTL)
        self.member_service = MembersService(
            self.engine,
            self.clock,
            Settings(transfer_points_max=TRANSFER_MAX, transfer_points_30d_max=TRANSFER_30D_MAX),
        )
        self.model = Model(START, POINTS_TTL)
        self.members: list[str] = []
        self.holds: list[tuple[int, uuid.UUID]] = []  # (model seq, hold_id)
        self.txns: list[tuple[int, uuid.UUID]] = []  # (model seq, transaction_id)
        self.stored: dict[tuple[str, str], Sent] = {}  # keys with a stored response
        self.adjustments: list[tuple[int, uuid.UUID]] = []  # (model seq, posting_id)
        self.operator_keys = 0  # adjustment requests' keys (stored under `operator`)
        self.failed: dict[tuple[str, str], Sent] = {}  # refused requests: keys still free
        self.sent = 0

    def teardown(self) -> None:
        self.h.run(self.engine.dispose())
        self.h.run(self.h.drop_database(self.database))

    @initialize(opening=st.lists(points, min_size=1, max_size=3))
    def enrol_members(self, opening: list[int]) -> None:
        """One to three members, each opening with an earn so that spending starts early."""

        async def setup() -> list[str]:
            for partner_id in PARTNERS:
                await add_partner(self.engine, self.clock, partner_id)
            return [await enrol(self.ledger, PARTNERS[0]) for _ in opening]

        self.members = self.h.run(setup())
        for member_id, amount in zip(self.members, opening, strict=True):
            self.model.members[member_id] = MemberState()
            self._earn(member_id, PARTNERS[0], amount)

    # -- sending ------------------------------------------------------------------------------

    def _send(self, sent: Sent) -> Any:
        """Submit one keyed request; check its outcome against the model's prediction and
        keep the model's new state only if the ledger (rightly) accepted it."""
        trial = self.model.copy()
        try:
            predicted = sent.apply(trial)
        except Refused as refusal:
            predicted, refused_with = None, refusal.code
        else:
            refused_with = None
        outcome = self.h.run(submit(self.ledger, sent.command, sent.key))
        claim = (sent.command.partner_id, sent.key)
        if refused_with is not None:
            assert outcome.error is not None, f"expected {refused_with}, got {outcome.body!r}"
            assert outcome.error.code == refused_with, (outcome.error.code, outcome.error.detail)
            self.failed[claim] = sent  # a refused request does not consume its key
            return None
        assert outcome.error is None, (outcome.error.code, outcome.error.detail)
        assert not outcome.replayed
        self.model = trial
        sent.status_code, sent.body = outcome.status_code, outcome.body
        self.stored[claim] = sent
        self.failed.pop(claim, None)
        body: dict[str, Any] = msgspec.json.decode(outcome.body)
        self._check_response(sent.command, outcome.status_code, body, predicted)
        return body

    def _key(self) -> str:
        self.sent += 1
        return f"key-{self.sent}"

    def _check_response(
        self, command: Command, status_code: int, body: dict[str, Any], predicted: object
    ) -> None:
        capture = None
        if isinstance(predicted, tuple):  # a capture: (hold, burn)
            predicted, capture = predicted
        if isinstance(predicted, HoldState):
            assert status_code == (201 if isinstance(command, OpenHold) else 200)
            assert body["status"] == predicted.status
            assert body["points"] == predicted.points
            assert body.get("captured_points") == predicted.captured
            hold_id = parse_hold_id(body["hold_id"])
            assert hold_id is not None
            if isinstance(command, OpenHold):
                self.holds.append((predicted.seq, hold_id))
            if isinstance(capture, Txn):
                burn_id = parse_transaction_id(body["transaction_id"])
                assert burn_id is not None
                self.txns.append((capture.seq, burn_id))
            return
        assert isinstance(predicted, Txn)
        assert status_code == 201
        assert (body["type"], body["points"]) == (predicted.kind, predicted.points)
        after = self.model.balance(predicted.member)
        assert body["balance_after"] == {
            "available": after.available,
            "held": after.held,
            "pending": after.pending,
        }
        transaction_id = parse_transaction_id(body["transaction_id"])
        assert transaction_id is not None
        self.txns.append((predicted.seq, transaction_id))

    def _member(self, which: int) -> str:
        return self.members[which % len(self.members)]

    @staticmethod
    def _recent(items: list[T], which: int) -> T:
        return items[-1 - which % len(items)]

    # -- rules: postings ----------------------------------------------------------------------

    def _earn(
        self,
        member_id: str,
        partner: str,
        amount: int,
        available_in: timedelta | None = None,
        expires_in: timedelta | None = None,
    ) -> None:
        now = self.clock.now()
        available_at = now + available_in if available_in is not None else None
        expires_at = (available_at or now) + expires_in if expires_in is not None else None
        command = Earn(
            partner,
            member_id,
            f"order-{self.sent}",
            points=amount,
            available_at=available_at,
            expires_at=expires_at,
        )
        self._send(
            Sent(
                command,
                self._key(),
                lambda model: model.earn(
                    member_id, partner, amount, available_at=available_at, expires_at=expires_at
                ),
            )
        )

    @rule(member=index, partner=st.sampled_from(PARTNERS), amount=small | points)
    def earn(self, member: int, partner: str, amount: int) -> None:
        self._earn(self._member(member), partner, amount)

    @rule(
        member=index,
        partner=st.sampled_from(PARTNERS),
        amount=small | points,
        available_in=st.sampled_from(AVAILABLE_IN),
        expires_in=st.sampled_from(EXPIRES_IN),
    )
    def earn_with_dates(
        self,
        member: int,
        partner: str,
        amount: int,
        available_in: timedelta | None,
        expires_in: timedelta | None,
    ) -> None:
        """Pending points (available later) and promotional points (expiring soon)."""
        self._earn(self._member(member), partner, amount, available_in, expires_in)

    @rule(member=index, partner=st.sampled_from(PARTNERS), amount=spend)
    def burn(self, member: int, partner: str, amount: int) -> None:
        member_id = self._member(member)
        self._send(
            Sent(
                Burn(partner, member_id, amount, reference=f"basket-{self.sent}"),
                self._key(),
                lambda model: model.burn(member_id, partner, amount),
            )
        )

    @rule(
        member=index,
        partner=st.sampled_from(PARTNERS),
        amount=spend,
        expires_in_s=st.sampled_from(HOLD_EXPIRES_IN_S),
    )
    def open_hold(self, member: int, partner: str, amount: int, expires_in_s: int) -> None:
        member_id = self._member(member)
        self._send(
            Sent(
                OpenHold(partner, member_id, amount, f"till-{self.sent}", expires_in_s),
                self._key(),
                lambda model: model.open_hold(member_id, partner, amount, expires_in_s),
            )
        )

    @precondition(lambda self: self.holds)
    @rule(which=index, amount=some_points)
    def capture(self, which: int, amount: int | None) -> None:
        seq, hold_id = self._recent(self.holds, which)
        partner = self.model.holds[seq].partner
        self._send(
            Sent(
                CaptureHold(partner, hold_id, amount),
                self._key(),
                lambda model: model.capture(seq, partner, amount),
            )
        )

    @precondition(lambda self: self.holds)
    @rule(which=index)
    def void(self, which: int) -> None:
        seq, hold_id = self._recent(self.holds, which)
        partner = self.model.holds[seq].partner
        self._send(
            Sent(VoidHold(partner, hold_id), self._key(), lambda model: model.void(seq, partner))
        )

    @precondition(lambda self: self.txns)
    @rule(which=index, amount=some_points)
    def reverse(self, which: int, amount: int | None) -> None:
        seq, transaction_id = self._recent(self.txns, which)
        partner = self.model.txns[seq].partner
        self._send(
            Sent(
                Reverse(partner, transaction_id, amount, reference=f"return-{self.sent}"),
                self._key(),
                lambda model: model.reverse(seq, partner, amount),
            )
        )

    @precondition(lambda self: self.txns and self.holds)
    @rule(which=index, kind=st.sampled_from(["capture", "void", "reverse"]))
    def another_partner_is_told_not_found(self, which: int, kind: str) -> None:
        """Holds and transactions of another partner are 404, as if they did not exist."""
        sent: Sent
        if kind == "reverse":
            seq, transaction_id = self._recent(self.txns, which)
            other = _other(self.model.txns[seq].partner)
            sent = Sent(
                Reverse(other, transaction_id),
                self._key(),
                partial(Model.reverse, txn_seq=seq, partner=other, points=None),
            )
        else:
            seq, hold_id = self._recent(self.holds, which)
            other = _other(self.model.holds[seq].partner)
            if kind == "capture":
                sent = Sent(
                    CaptureHold(other, hold_id),
                    self._key(),
                    partial(Model.capture, hold_seq=seq, partner=other, points=None),
                )
            else:
                sent = Sent(
                    VoidHold(other, hold_id),
                    self._key(),
                    partial(Model.void, hold_seq=seq, partner=other),
                )
        self._send(sent)

    @rule(
        member=index,
        issuer=st.sampled_from((*PARTNERS, "operator")),
        amount=st.integers(min_value=-300, max_value=300).filter(bool),
    )
    def adjust(self, member: int, issuer: str, amount: int) -> None:
        """Requested by one operator, approved by another; refused debits change nothing."""
        member_id = self._member(member)
        trial = self.model.copy()
        try:
            predicted: Txn | None = trial.adjust(member_id, issuer, amount)
        except Refused as refusal:
            predicted, refused_with = None, refusal.code
        else:
            refused_with = None
        service = AdjustmentService(self.engine, self.clock, self.ledger)
        body = AdjustmentCreate(member_id=member_id, points=amount, issuer=issuer, reason="x")
        key = self._key()
        request = service.request(
            Approver("opt_requester", "requester"), body, Idempotency(key, key.encode())
        )
        try:
            created = msgspec.json.decode(self.h.run(request).body)
        except ExchangeError as error:
            refused = error.code
        else:
            refused = None
        assert refused == refused_with, (refused, refused_with)
        if refused is not None:
            return
        self.operator_keys += 1
        approve = service.approve(Approver("opt_approver", "approver"), created["adjustment_id"])
        posted = self.h.run(approve)
        assert predicted is not None
        assert posted.status == "posted"
        assert posted.posting_id is not None
        self.model = trial
        self.adjustments.append((predicted.seq, posted.posting_id))

    # -- rules: exactly once ------------------------------------------------------------------

    @precondition(lambda self: self.stored)
    @rule(which=index)
    def replay(self, which: int) -> None:
        """Same key, same request: the stored response again, and no second effect."""
        sent = self._recent(list(self.stored.values()), which)
        outcome = self.h.run(submit(self.ledger, sent.command, sent.key))
        assert outcome.error is None, (outcome.error.code, outcome.error.detail)
        assert outcome.replayed
        assert (outcome.status_code, outcome.body) == (sent.status_code, sent.body)

    @precondition(lambda self: self.stored)
    @rule(which=index, amount=points)
    def reuse_key_for_another_request(self, which: int, amount: int) -> None:
        sent = self._recent(list(self.stored.values()), which)
        other = Burn(sent.command.partner_id, self.members[0], amount, reference="not-the-same")
        outcome = self.h.run(submit(self.ledger, other, sent.key))
        assert outcome.error is not None
        assert outcome.error.code == "idempotency_key_reused"

    @precondition(lambda self: self.failed)
    @rule(which=index)
    def retry_refused_request(self, which: int) -> None:
        """A refused request left its key free: the same request runs afresh."""
        self._send(self._recent(list(self.failed.values()), which))

    # -- rules: transfers ---------------------------------------------------------------------

    @rule(
        sender=index,
        recipient=index,
        amount=spend | st.sampled_from([TRANSFER_MAX, TRANSFER_MAX + 1]),
    )
    def transfer(self, sender: int, recipient: int, amount: int) -> None:
        """Member to member (to oneself when the indexes meet: refused)."""
        self._transfer(self._member(sender), self._member(recipient), amount)

    @precondition(lambda self: len(self.members) > 1)
    @rule(sender=index, amount=spend)
    def transfer_to_another_member(self, sender: int, amount: int) -> None:
        self._transfer(self._member(sender), self._member(sender + 1), amount)

    def _transfer(self, sender_id: str, recipient_id: str, amount: int) -> None:
        trial = self.model.copy()
        try:
            moved = trial.transfer(
                sender_id,
                recipient_id,
                amount,
                per_transfer_max=TRANSFER_MAX,
                per_30d_max=TRANSFER_30D_MAX,
            )
        except Refused as refusal:
            moved, refused_with = [], refusal.code
        else:
            refused_with = None
        key = self._key()
        idempotency = Idempotency(key, key.encode())
        outcome = None
        try:
            outcome = self.h.run(
                self.member_service.transfer(sender_id, recipient_id, amount, idempotency)
            )
        except ExchangeError as error:
            refused_for_real = error
        else:
            refused_for_real = None
        if refused_for_real is not None:
            code = refused_for_real.code
            assert refused_with == code, (refused_with, code, refused_for_real.detail)
            return
        assert outcome is not None
        assert refused_with is None, f"expected {refused_with}, got {outcome.body!r}"
        self.model = trial
        body: dict[str, Any] = msgspec.json.decode(outcome.body)
        assert outcome.status_code == 201
        assert (body["type"], body["points"]) == ("transfer_out", amount)
        assert [
            (lot["issuer"], lot["points"], datetime.fromisoformat(lot["expires_at"]))
            for lot in body["lots"]
        ] == moved
        after = self.model.balance(sender_id)
        assert body["balance_after"] == {
            "available": after.available,
            "held": after.held,
            "pending": after.pending,
        }

    # -- rules: time --------------------------------------------------------------------------

    @rule(by=st.sampled_from(ADVANCE_BY))
    def advance(self, by: timedelta) -> None:
        self.clock.advance(by)
        self.model.advance(by)

    @rule()
    def sweep(self) -> None:
        result = self.h.run(self.ledger.sweep())
        predicted = self.model.sweep()
        assert (result.expired_points, result.matured_points, result.released_holds) == (
            predicted.expired_points,
            predicted.matured_points,
            predicted.released_holds,
        )

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def the_ledger_agrees_with_the_model(self) -> None:
        if not self.members:
            return
        self.h.run(self._check())

    async def _check(self) -> None:
        report = await verify_ledger(self.engine)
        assert report.discrepancies == []
        totals = report.totals
        assert (
            totals["issued"] - totals["redeemed"] - totals["expired"] + totals["adjusted"]
            == totals["outstanding"]
        )
        model = self.model
        assert (
            totals["issued"],
            totals["redeemed"],
            totals["expired"],
            totals["adjusted"],
            totals["outstanding"],
        ) == (model.issued, model.redeemed, model.expired, model.adjusted, model.outstanding())
        for member_id in self.members:
            balance = await self.ledger.read_balance(member_id)
            expected = model.balance(member_id)
            assert (balance.available, balance.held, balance.pending) == (
                expected.available,
                expected.held,
                expected.pending,
            ), member_id
            assert [(e.points, e.expires_at) for e in balance.expiring] == list(expected.expiring)
            if balance.available < 0:
                assert model.members[member_id].clawed_back

        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT type, count(*) FROM postings GROUP BY type"))
            counts = {str(kind): int(count) for kind, count in rows}
            keys = (await conn.execute(text("SELECT count(*) FROM idempotency_keys"))).scalar()
            stored = await self._stored(conn)
        assert {kind: counts.get(kind, 0) for kind in model.postings} == model.postings
        assert keys == len(self.stored) + self.operator_keys
        assert stored == model.written()

    async def _stored(self, conn: AsyncConnection) -> dict[str, object]:
        """The sub-ledger as the database holds it, in the model's numbering."""
        txn_seqs = {transaction_id: seq for seq, transaction_id in self.txns + self.adjustments}
        hold_seqs = {hold_id: seq for seq, hold_id in self.holds}
        lots = await conn.execute(
            text("SELECT earn_id, remaining, matured FROM lots WHERE source_lot_id IS NULL")
        )
        transferred = await conn.execute(
            text(
                "SELECT member_id, issuer_id, expires_at, initial, remaining, matured "
                "FROM lots WHERE source_lot_id IS NOT NULL"
            )
        )
        holds = await conn.execute(text("SELECT hold_id, status FROM holds"))
        debts = await conn.execute(text("SELECT member_id, debt FROM members"))
        return {
            "lots": {
                txn_seqs[earn_id]: (remaining, matured) for earn_id, remaining, matured in lots
            },
            "transferred": sorted(tuple(row) for row in transferred),
            "holds": {hold_seqs[hold_id]: status for hold_id, status in holds},
            "debts": {member_id: debt for member_id, debt in debts},
        }


def _other(partner_id: str) -> str:
    return PARTNERS[(PARTNERS.index(partner_id) + 1) % len(PARTNERS)]


def test_ledger_agrees_with_the_model(postgres: EmbeddedPostgres) -> None:
    loop = asyncio.new_event_loop()
    LedgerMachine.harness = Harness(loop, postgres)
    try:
        run_state_machine_as_test(LedgerMachine, settings=SETTINGS)
    finally:
        LedgerMachine.harness = None
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- what the machine found, pinned as plain scenarios ------------------------------------------
# Three ledger bugs the machine found, each fixed and kept here as a regression test.


def _hold_id(body: dict[str, Any]) -> uuid.UUID:
    hold_id = parse_hold_id(body["hold_id"])
    assert hold_id is not None
    return hold_id


def _transaction_id(body: dict[str, Any]) -> uuid.UUID:
    transaction_id = parse_transaction_id(body["transaction_id"])
    assert transaction_id is not None
    return transaction_id


async def _expiring(
    ledger: LedgerService, member_id: str, start: datetime
) -> list[tuple[int, int]]:
    """(points, days from start until they expire), soonest first."""
    balance = await ledger.read_balance(member_id)
    return [(item.points, (item.expires_at - start).days) for item in balance.expiring]


async def test_capture_burns_only_what_the_hold_reserved(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    start = clock.now()
    grocer = await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, grocer)
    await post(ledger, Earn(grocer, member, "soon", points=100, expires_at=start + 10 * DAY))
    await post(ledger, Earn(grocer, member, "late", points=100, expires_at=start + 20 * DAY))
    first = await post(ledger, OpenHold(grocer, member, 50))  # soon: 50
    second = await post(ledger, OpenHold(grocer, member, 60))  # soon: 50, late: 10
    await post(ledger, VoidHold(grocer, _hold_id(first)))  # soon: 50 unreserved again
    await post(ledger, CaptureHold(grocer, _hold_id(second), 55))
    # The hold reserved soon:50 and late:10, so the capture burns soon:50 and late:5 and
    # releases late:5; the 50 points of `soon` the hold never reserved stay where they are.
    assert await _expiring(ledger, member, start) == [(50, 10), (95, 20)]


async def test_debt_is_repaid_in_spending_order_by_lots_maturing_together(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    start = clock.now()
    grocer = await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, grocer)
    earned = await post(ledger, Earn(grocer, member, "spent", points=100))
    await post(ledger, Burn(grocer, member, 100))
    await post(ledger, Reverse(grocer, _transaction_id(earned)))  # available -100
    tomorrow = start + DAY
    await post(
        ledger,
        Earn(grocer, member, "late", points=80, available_at=tomorrow, expires_at=start + 10 * DAY),
    )
    await post(
        ledger,
        Earn(grocer, member, "soon", points=60, available_at=tomorrow, expires_at=start + 2 * DAY),
    )
    clock.advance(DAY)
    # Both lots become spendable together; like every draw, the repayment takes the
    # soonest-expiring points first: soon 60, late 40, leaving late's 40.
    assert await _expiring(ledger, member, start) == [(40, 10)]
    clock.advance(DAY)
    assert (await ledger.read_balance(member)).available == 40


async def test_debt_is_repaid_in_spending_order_by_holds_expiring_together(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    start = clock.now()
    grocer = await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, grocer)
    await post(ledger, Earn(grocer, member, "late", points=50, expires_at=start + 10 * DAY))
    await post(ledger, OpenHold(grocer, member, 50, expires_in_s=3600))  # late: 50
    await post(ledger, Earn(grocer, member, "soon", points=50, expires_at=start + 2 * DAY))
    await post(ledger, OpenHold(grocer, member, 50, expires_in_s=3600))  # soon: 50
    earned = await post(ledger, Earn(grocer, member, "spent", points=30))
    await post(ledger, Burn(grocer, member, 30))
    await post(ledger, Reverse(grocer, _transaction_id(earned)))  # available -30
    clock.advance(HOUR)
    # Both holds are released together; the debt of 30 is repaid from the soonest-expiring
    # points: soon keeps 20, late keeps 50.
    assert await _expiring(ledger, member, start) == [(20, 2), (50, 10)]


async def test_sweep_writes_the_maturing_of_an_emptied_pending_lot(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    grocer = await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, grocer)
    returned = await post(
        ledger, Earn(grocer, member, "returned", points=10, available_at=clock.now() + HOUR)
    )
    await post(ledger, Reverse(grocer, _transaction_id(returned)))  # the pending lot is empty
    clock.advance(HOUR)
    first = await ledger.sweep()
    assert first.members == 1  # the lot fell due: it matures (with nothing in it)
    async with engine.connect() as conn:
        matured = await conn.scalar(text("SELECT matured FROM lots"))
    second = await ledger.sweep()
    # Once swept, nothing is due any more (the maturing of an emptied lot is written too,
    # or every sweep would pick the member again and never get past such members).
    assert (matured, second.members) == (True, 0)
