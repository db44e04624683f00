"""An in-memory model of the ledger's contract (§3): what the property test predicts with.

It is written from the contract and the rules' docstrings, not from `exchange.ledger`, and
imports nothing from `exchange`: two independent readings of the same semantics that must
agree on every outcome and every balance.

The model keeps each member's book as the journal has it: time-driven changes (pending
points maturing, holds expiring, lots expiring) are applied to the stored book only when
the ledger writes that member (a successful command, or a sweep). Balances are read from
a copy settled to now, so they never wait for a sweep. This split is what lets the model
predict the journal's totals (expired, outstanding) exactly, not just the balances.

Every command validates before it mutates, and raises `Refused(code)` with the contract's
error code; the caller runs commands on a copy and keeps the copy only on success, because
a refused command changes nothing (not even the settlement it triggered).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["HoldState", "LotState", "MemberState", "Model", "ModelBalance", "Refused", "Txn"]

EXPIRING_SHOWN_MAX = 5
HOLD_EXPIRES_IN_S_MAX = 604_800
OPEN, CAPTURED, VOIDED, EXPIRED = "open", "captured", "voided", "expired"
EARN, BURN, EARN_REVERSAL, BURN_REVERSAL = "earn", "burn", "earn_reversal", "burn_reversal"
ADJUSTMENT = "adjustment"  # an operator's four-eyes correction (contract §8)
TRANSFER_OUT, TRANSFER_IN = "transfer_out", "transfer_in"
TRANSFER_WINDOW = timedelta(days=30)


class Refused(Exception):
    """The command is refused with this contract error code; nothing changed."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class LotState:
    seq: int  # creation order, for "ties oldest first"
    issuer: str
    initial: int
    remaining: int
    available_at: datetime
    expires_at: datetime
    matured: bool = False  # as the journal has it (set when the member is settled)
    transferred: bool = False  # a lot a transfer created in the recipient's book

    def order(self) -> tuple[datetime, int]:
        """Spending order: soonest-expiring first, ties oldest first."""
        return (self.expires_at, self.seq)


@dataclass
class HoldState:
    seq: int
    member: str
    partner: str
    points: int
    expires_at: datetime
    draws: list[tuple[int, int]]  # (lot seq, points reserved), in spending order
    status: str = OPEN
    captured: int | None = None


@dataclass
class Txn:
    """A transaction partners see: earns and burns (reversible) and reversals (not)."""

    seq: int
    kind: str
    partner: str
    member: str
    points: int
    lot: int | None = None  # earn: the lot it created
    draws: list[tuple[int, int]] = field(default_factory=list)  # burn: (lot, points) drawn
    restored: dict[int, int] = field(default_factory=dict)  # burn: points refunds returned
    reversed: int = 0


@dataclass
class MemberState:
    lots: dict[int, LotState] = field(default_factory=dict)
    holds: dict[int, HoldState] = field(default_factory=dict)
    debt: int = 0  # points an earn reversal found already spent: a negative balance
    clawed_back: bool = False  # an earn reversal ever found the points spent


@dataclass(frozen=True)
class ModelBalance:
    available: int
    held: int
    pending: int
    expiring: tuple[tuple[int, datetime], ...]


@dataclass
class Settled:
    """What settling (a sweep, or a command's own catch-up) posted."""

    expired_points: int = 0
    matured_points: int = 0
    released_holds: int = 0


class Model:
    def __init__(self, now: datetime, points_ttl: timedelta) -> None:
        self.now = now
        self.points_ttl = points_ttl
        self.members: dict[str, MemberState] = {}
        self.txns: dict[int, Txn] = {}
        self.holds: dict[int, HoldState] = {}
        self.issued = 0
        self.redeemed = 0
        self.expired = 0
        self.adjusted = 0  # + credited to members by adjustments, - debited
        self.postings = {
            EARN: 0, BURN: 0, EARN_REVERSAL: 0, BURN_REVERSAL: 0, "hold": 0,
            ADJUSTMENT: 0, TRANSFER_OUT: 0, TRANSFER_IN: 0,
        }  # fmt: skip
        self.transfers: list[tuple[datetime, str, int]] = []  # (when, sender, points)
        self._seq = 0

    def copy(self) -> Model:
        return copy.deepcopy(self)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # -- lots ---------------------------------------------------------------------------------

    @staticmethod
    def _spendable(member: MemberState, at: datetime) -> list[LotState]:
        lots = [
            lot
            for lot in member.lots.values()
            if lot.matured and lot.expires_at > at and lot.remaining > 0
        ]
        return sorted(lots, key=LotState.order)

    @staticmethod
    def _take(lots: Iterable[LotState], points: int) -> list[tuple[int, int]]:
        """Take `points` from the lots in the order given; what was taken from each."""
        taken = []
        for lot in lots:
            if points == 0:
                break
            part = min(lot.remaining, points)
            if part:
                lot.remaining -= part
                points -= part
                taken.append((lot.seq, part))
        if points:
            raise AssertionError("model drew more points than the lots hold")
        return taken

    def _tidy(self, member: MemberState, at: datetime, settled: Settled) -> None:
        """Points that are spendable repay a negative balance first; points sitting in a
        lot that has expired are breakage at once."""
        if member.debt:
            spendable = self._spendable(member, at)
            repaid = min(member.debt, sum(lot.remaining for lot in spendable))
            self._take(spendable, repaid)
            member.debt -= repaid
        for lot in member.lots.values():
            if lot.matured and lot.remaining and lot.expires_at <= at:
                settled.expired_points += lot.remaining
                self.expired += lot.remaining
                lot.remaining = 0

    def _release(self, member: MemberState, hold: HoldState, status: str) -> None:
        for lot_seq, points in hold.draws:
            member.lots[lot_seq].remaining += points
        hold.status = status

    # -- time ---------------------------------------------------------------------------------

    def _settle(self, member: MemberState, now: datetime, settled: Settled) -> None:
        """Apply what fell due by `now`, instant by instant. At one instant, pending lots
        mature and open holds expire together; then a negative balance is repaid once from
        the points that are spendable (soonest-expiring first); then lots expiring at that
        instant expire (points released into an already-expired lot expire too)."""
        while True:
            due = [lot.available_at for lot in member.lots.values() if not lot.matured]
            due += [hold.expires_at for hold in member.holds.values() if hold.status == OPEN]
            due += [lot.expires_at for lot in member.lots.values() if lot.matured and lot.remaining]
            at = min((moment for moment in due if moment <= now), default=None)
            if at is None:
                return
            for lot in member.lots.values():
                if not lot.matured and lot.available_at == at:
                    lot.matured = True
                    settled.matured_points += lot.remaining
            for hold in member.holds.values():
                if hold.status == OPEN and hold.expires_at == at:
                    self._release(member, hold, EXPIRED)
                    settled.released_holds += 1
            self._tidy(member, at, settled)

    def _member(self, member_id: str) -> MemberState:
        member = self.members[member_id]
        self._settle(member, self.now, Settled())
        return member

    def sweep(self) -> Settled:
        settled = Settled()
        for member in self.members.values():
            self._settle(member, self.now, settled)
        return settled

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    # -- reads --------------------------------------------------------------------------------

    def balance(self, member_id: str) -> ModelBalance:
        member = self.copy()._member(member_id)  # settled on a throwaway copy
        expiring: dict[datetime, int] = {}
        for lot in member.lots.values():
            if lot.remaining and lot.expires_at > self.now:
                expiring[lot.expires_at] = expiring.get(lot.expires_at, 0) + lot.remaining
        return ModelBalance(
            available=self._available(member),
            held=sum(hold.points for hold in member.holds.values() if hold.status == OPEN),
            pending=sum(lot.remaining for lot in member.lots.values() if not lot.matured),
            expiring=tuple((points, at) for at, points in sorted(expiring.items()))[
                :EXPIRING_SHOWN_MAX
            ],
        )

    def _available(self, member: MemberState) -> int:
        """What can be burned now: spendable points less any debt (may be negative)."""
        return sum(lot.remaining for lot in self._spendable(member, self.now)) - member.debt

    def written(self) -> dict[str, object]:
        """The sub-ledger as stored: each earn's lot (remaining, matured), each hold's
        status, each member's debt; keyed by the model's own numbers."""
        lots = {}
        for txn in self.txns.values():
            if txn.kind in (EARN, ADJUSTMENT) and txn.lot is not None:
                lot = self.members[txn.member].lots[txn.lot]
                lots[txn.seq] = (lot.remaining, lot.matured)
        transferred = sorted(
            (member_id, lot.issuer, lot.expires_at, lot.initial, lot.remaining, lot.matured)
            for member_id, member in self.members.items()
            for lot in member.lots.values()
            if lot.transferred
        )
        return {
            "lots": lots,
            "transferred": transferred,
            "holds": {seq: hold.status for seq, hold in self.holds.items()},
            "debts": {member_id: member.debt for member_id, member in self.members.items()},
        }

    def outstanding(self) -> int:
        """The journal's member accounts summed, as written (not settled to now)."""
        total = 0
        for member in self.members.values():
            total += sum(lot.remaining for lot in member.lots.values()) - member.debt
            total += sum(hold.points for hold in member.holds.values() if hold.status == OPEN)
        return total

    # -- commands (run them on a copy; see the module docstring) --------------------------------

    def earn(
        self,
        member_id: str,
        partner: str,
        points: int,
        *,
        available_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> Txn:
        latest = self.now + self.points_ttl
        available = max(available_at or self.now, self.now)
        expiry = latest if expires_at is None else expires_at
        if available >= latest or expiry <= available or expiry > latest:
            raise Refused("validation_error")
        member = self._member(member_id)
        lot = LotState(self._next(), partner, points, points, available, expiry)
        lot.matured = available <= self.now
        member.lots[lot.seq] = lot
        self.issued += points
        self._tidy(member, self.now, Settled())
        return self._txn(Txn(self._next(), EARN, partner, member_id, points, lot=lot.seq))

    def _draw_available(self, member: MemberState, points: int) -> list[tuple[int, int]]:
        if points > self._available(member):  # also when the balance is negative
            raise Refused("insufficient_points")
        return self._take(self._spendable(member, self.now), points)

    def burn(self, member_id: str, partner: str, points: int) -> Txn:
        member = self._member(member_id)
        draws = self._draw_available(member, points)
        self.redeemed += points
        return self._txn(Txn(self._next(), BURN, partner, member_id, points, draws=draws))

    def open_hold(self, member_id: str, partner: str, points: int, expires_in_s: int) -> HoldState:
        if not 1 <= expires_in_s <= HOLD_EXPIRES_IN_S_MAX:
            raise Refused("validation_error")
        member = self._member(member_id)
        draws = self._draw_available(member, points)
        hold = HoldState(
            self._next(),
            member_id,
            partner,
            points,
            self.now + timedelta(seconds=expires_in_s),
            draws,
        )
        member.holds[hold.seq] = self.holds[hold.seq] = hold
        self.postings["hold"] += 1
        return hold

    def _open_hold(self, hold_seq: int, partner: str) -> tuple[MemberState, HoldState]:
        found = self.holds[hold_seq]
        if found.partner != partner:
            raise Refused("hold_not_found")
        member = self._member(found.member)
        hold = member.holds[hold_seq]  # the settled copy's hold
        if hold.status != OPEN:
            raise Refused("hold_not_open")
        return member, hold

    def capture(self, hold_seq: int, partner: str, points: int | None) -> tuple[HoldState, Txn]:
        """Burn `points` (default all) of the hold from its lots in the hold's draw order;
        the rest goes back to the lots it was reserved from."""
        member, hold = self._open_hold(hold_seq, partner)
        captured = hold.points if points is None else points
        if captured > hold.points:
            raise Refused("validation_error")
        burned = []
        left = captured
        for lot_seq, reserved in hold.draws:
            part = min(reserved, left)
            left -= part
            if part:
                burned.append((lot_seq, part))
            member.lots[lot_seq].remaining += reserved - part
        hold.status, hold.captured = CAPTURED, captured
        self.redeemed += captured
        self._tidy(member, self.now, Settled())
        txn = self._txn(Txn(self._next(), BURN, partner, hold.member, captured, draws=burned))
        return hold, txn

    def void(self, hold_seq: int, partner: str) -> HoldState:
        member, hold = self._open_hold(hold_seq, partner)
        self._release(member, hold, VOIDED)
        self._tidy(member, self.now, Settled())
        return hold

    def reverse(self, txn_seq: int, partner: str, points: int | None) -> Txn:
        original = self.txns[txn_seq]
        if original.partner != partner:
            raise Refused("transaction_not_found")
        if original.kind not in (EARN, BURN):
            raise Refused("not_reversible")
        left = original.points - original.reversed
        wanted = left if points is None else points
        if wanted > left or left == 0:
            raise Refused("reversal_exceeds_original")
        member = self._member(original.member)
        if original.kind == EARN:
            self._take_back_earn(member, original, wanted)
            self.issued -= wanted
            kind = EARN_REVERSAL
        else:
            self._refund_burn(member, original, wanted)
            self.redeemed -= wanted
            kind = BURN_REVERSAL
        original.reversed += wanted
        self._tidy(member, self.now, Settled())
        return self._txn(Txn(self._next(), kind, partner, original.member, wanted))

    def _take_back_earn(self, member: MemberState, original: Txn, points: int) -> None:
        """From the earn's own lot first (pending or available), the shortfall from the
        member's other spendable points, and what is still missing becomes debt."""
        assert original.lot is not None
        lot = member.lots[original.lot]
        from_lot = min(points, lot.remaining)
        lot.remaining -= from_lot
        shortfall = points - from_lot
        others = self._spendable(member, self.now)
        from_others = min(shortfall, sum(other.remaining for other in others))
        self._take(others, from_others)
        if shortfall > from_others:
            member.debt += shortfall - from_others
            member.clawed_back = True

    @staticmethod
    def _refund_burn(member: MemberState, original: Txn, points: int) -> None:
        """Back to the lots the burn drew from, latest-expiring first."""
        left = points
        for lot_seq, drawn in reversed(original.draws):
            part = min(drawn - original.restored.get(lot_seq, 0), left)
            if part > 0:
                member.lots[lot_seq].remaining += part
                original.restored[lot_seq] = original.restored.get(lot_seq, 0) + part
                left -= part
        if left:
            raise AssertionError("model refunded more than the burn drew")

    def adjust(self, member_id: str, issuer: str, points: int) -> Txn:
        """A credit is a new spendable lot with the default expiry (repaying debt first, like
        an earn); a debit draws soonest-expiring first, like a burn, never beyond available."""
        member = self._member(member_id)
        if points < 0:
            self._draw_available(member, -points)
            self.adjusted += points
            return self._txn(Txn(self._next(), ADJUSTMENT, issuer, member_id, -points))
        lot = LotState(self._next(), issuer, points, points, self.now, self.now + self.points_ttl)
        lot.matured = True
        member.lots[lot.seq] = lot
        self.adjusted += points
        self._tidy(member, self.now, Settled())
        return self._txn(Txn(self._next(), ADJUSTMENT, issuer, member_id, points, lot=lot.seq))

    def transfer(
        self,
        sender_id: str,
        recipient_id: str,
        points: int,
        *,
        per_transfer_max: int,
        per_30d_max: int,
    ) -> list[tuple[str, int, datetime]]:
        """Member to member: the points leave the sender's spendable lots in spending order
        and arrive as new lots of the recipient with the same issuer and expiry (which
        repay a negative balance first). Neither issued nor redeemed moves. Returns
        (issuer, points, expires_at) per lot drawn."""
        if sender_id == recipient_id:
            raise Refused("validation_error")
        sent = sum(
            moved
            for at, who, moved in self.transfers
            if who == sender_id and at > self.now - TRANSFER_WINDOW
        )
        if points > per_transfer_max or sent + points > per_30d_max:
            raise Refused("transfer_limit_exceeded")
        sender, recipient = self._member(sender_id), self._member(recipient_id)
        moved = []
        for lot_seq, part in self._draw_available(sender, points):
            source = sender.lots[lot_seq]
            lot = LotState(
                self._next(), source.issuer, part, part, source.available_at, source.expires_at,
                matured=True, transferred=True,
            )  # fmt: skip
            recipient.lots[lot.seq] = lot
            moved.append((source.issuer, part, source.expires_at))
        self._tidy(recipient, self.now, Settled())
        self.transfers.append((self.now, sender_id, points))
        self.postings[TRANSFER_OUT] += 1
        self.postings[TRANSFER_IN] += 1
        return moved

    def _txn(self, txn: Txn) -> Txn:
        self.txns[txn.seq] = txn
        self.postings[txn.kind] += 1
        return txn
