"""The posting rules: how each operation changes a member's book and which balanced
postings it records. Pure: no I/O, no clock but the one passed in.

Every rule validates first and mutates after, so an operation that raises leaves the
book exactly as it found it. Time-driven changes (pending points maturing, holds
expiring, lots expiring) are applied by `settle_due` before any operation, in the
order they fell due, and stamped with the moment they fell due (never before the
ledger's `closed_until`: a closed settlement period never changes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from exchange.errors import (
    CreditLimitExceeded,
    CurrencyNotSupported,
    HoldNotOpen,
    InsufficientPoints,
    InvariantViolation,
    NotReversible,
    ReversalExceedsOriginal,
    Unprocessable,
)
from exchange.ledger._model import (
    EXPIRING_LOTS_SHOWN_MAX,
    POINTS_PER_REQUEST_MAX,
    Account,
    Allocation,
    AllocationKind,
    Balance,
    Entry,
    ExpiringPoints,
    Hold,
    HoldStatus,
    IdFactory,
    Lot,
    MemberBook,
    PartnerTerms,
    Posting,
    PostingType,
)

__all__ = [
    "Context",
    "OriginalPosting",
    "PartnerState",
    "balance",
    "burn",
    "capture_hold",
    "earn",
    "open_hold",
    "points_for_purchase",
    "reverse",
    "settle_due",
    "void_hold",
]

HOLD_EXPIRES_IN_S_DEFAULT = 900
HOLD_EXPIRES_IN_S_MAX = 604_800


@dataclass(frozen=True, slots=True)
class Context:
    """What every rule needs besides the book: the time, and where ids come from."""

    now: datetime
    closed_until: datetime  # no posting may be stamped earlier than this
    points_ttl: timedelta
    ids: IdFactory

    def stamp(self, due: datetime) -> datetime:
        return max(due, self.closed_until)


@dataclass(slots=True)
class PartnerState:
    """A partner's terms for this batch, and the issuance value the batch has added."""

    terms: PartnerTerms
    exposure_added: Decimal = field(default_factory=Decimal)

    @property
    def partner_id(self) -> str:
        return self.terms.partner_id


@dataclass(frozen=True, slots=True)
class OriginalPosting:
    """A transaction being reversed, with what earlier reversals already took back."""

    posting_id: uuid.UUID
    type: PostingType
    partner_id: str
    member_id: str
    points: int
    unit_price: Decimal
    currency: str
    reversed_points: int
    lot_id: uuid.UUID | None  # earns: the lot the earn created
    draws: tuple[tuple[uuid.UUID, int], ...]  # burns: (lot, points) drawn, in order
    restored: dict[uuid.UUID, int]  # burns: points earlier reversals returned per lot


# -- building postings -------------------------------------------------------------------------


def _record(book: MemberBook, posting: Posting) -> Posting:
    """Append a posting after checking it balances (the database checks it again)."""
    if posting.points <= 0 or sum(entry.amount for entry in posting.entries) != 0:
        raise InvariantViolation(f"unbalanced or empty posting {posting.posting_id}")
    book.postings.append(posting)
    return posting


def _member(book: MemberBook, account: Account, amount: int) -> Entry:
    return Entry(account, book.member_id, amount)


def _draw(
    lots: Iterable[Lot], points: int, kind: AllocationKind = AllocationKind.DRAW
) -> list[Allocation]:
    """Take `points` from `lots` in the order given."""
    allocations = []
    for lot in lots:
        if points == 0:
            break
        take = min(lot.remaining, points)
        if take == 0:
            continue
        lot.remaining -= take
        points -= take
        allocations.append(Allocation(lot.lot_id, kind, take))
    if points:
        raise InvariantViolation("drew more points than the lots hold")
    return allocations


def _release(lot: Lot, points: int) -> Allocation:
    lot.remaining += points
    if lot.remaining > lot.initial:
        raise InvariantViolation(f"lot {lot.lot_id} would hold more than it was issued")
    return Allocation(lot.lot_id, AllocationKind.RELEASE, points)


def _repay_debt(book: MemberBook, at: datetime) -> list[Allocation]:
    """Points that just became spendable cover a negative balance first."""
    if book.debt == 0:
        return []
    lots = book.spendable(at)
    amount = min(book.debt, sum(lot.remaining for lot in lots))
    book.debt -= amount
    return _draw(lots, amount, AllocationKind.REPAY)


def _available(book: MemberBook, at: datetime) -> int:
    return sum(lot.remaining for lot in book.spendable(at)) - book.debt


def _expire(book: MemberBook, ctx: Context, lot: Lot, at: datetime) -> None:
    """Breakage: the lot's remaining points leave the member for the issuer's breakage."""
    points = lot.remaining
    allocation = _draw([lot], points)
    account = Account.AVAILABLE if lot.matured else Account.PENDING
    _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.EXPIRY,
            member_id=book.member_id,
            partner_id=lot.issuer_id,
            points=points,
            posted_at=at,
            entries=(
                _member(book, account, -points),
                Entry(Account.BREAKAGE, lot.issuer_id, points),
            ),
            allocations=tuple(allocation),
            unit_price=lot.unit_price,
        ),
    )


def _expire_released(
    book: MemberBook, ctx: Context, lot_ids: Iterable[uuid.UUID], at: datetime
) -> None:
    """Points returned to a lot that has already expired expire at once."""
    for lot_id in dict.fromkeys(lot_ids):
        lot = book.lots[lot_id]
        if lot.remaining > 0 and lot.expires_at <= at:
            _expire(book, ctx, lot, at)


# -- time-driven changes -----------------------------------------------------------------------


def _mature(book: MemberBook, ctx: Context, lot: Lot, at: datetime) -> Posting | None:
    """Pending points become available (any debt is repaid by the caller afterwards)."""
    lot.matured = True
    book.matured_lots.add(lot.lot_id)
    points = lot.remaining
    if points == 0:
        return None
    return _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.MATURATION,
            member_id=book.member_id,
            partner_id=lot.issuer_id,
            points=points,
            posted_at=at,
            entries=(
                _member(book, Account.PENDING, -points),
                _member(book, Account.AVAILABLE, points),
            ),
        ),
    )


def _release_hold(
    book: MemberBook,
    ctx: Context,
    hold: Hold,
    at: datetime,
    status: HoldStatus,
    *,
    repay: bool = True,
) -> Posting:
    """Reserved points return to their lots (those already expired expire at once)."""
    released = [_release(book.lots[lot_id], points) for lot_id, points in hold.draws]
    hold.status = status
    hold.closed_at = at
    book.changed_holds.add(hold.hold_id)
    repaid = _repay_debt(book, at) if repay else []
    posting = _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.HOLD_RELEASE,
            member_id=book.member_id,
            partner_id=hold.partner_id,
            points=hold.points,
            posted_at=at,
            entries=(
                _member(book, Account.HELD, -hold.points),
                _member(book, Account.AVAILABLE, hold.points),
            ),
            allocations=(*released, *repaid),
            hold_id=hold.hold_id,
        ),
    )
    _expire_released(book, ctx, (lot_id for lot_id, _ in hold.draws), at)
    return posting


def _next_due(book: MemberBook, now: datetime) -> datetime | None:
    """The earliest moment, up to `now`, at which something falls due."""
    moments = [
        lot.available_at if not lot.matured else lot.expires_at
        for lot in book.lots.values()
        if (not lot.matured and lot.available_at <= now)
        or (lot.matured and lot.remaining > 0 and lot.expires_at <= now)
    ]
    moments += [
        hold.expires_at
        for hold in book.holds.values()
        if hold.status is HoldStatus.OPEN and hold.expires_at <= now
    ]
    return min(moments, default=None)


def _settle_moment(book: MemberBook, ctx: Context, moment: datetime) -> None:
    """Everything falling due at one instant: pending lots mature and open holds expire
    (their points become spendable together), then any debt is repaid once, soonest-
    expiring points first, then lots expiring at this instant expire."""
    at = ctx.stamp(moment)
    freed: list[Posting | None] = []
    maturing = [lot for lot in book.lots.values() if not lot.matured and lot.available_at == moment]
    for lot in sorted(maturing, key=Lot.sort_key):
        freed.append(_mature(book, ctx, lot, at))
    expiring_holds = [
        hold
        for hold in book.holds.values()
        if hold.status is HoldStatus.OPEN and hold.expires_at == moment
    ]
    for hold in sorted(expiring_holds, key=lambda h: (h.created_at, h.hold_id)):
        freed.append(_release_hold(book, ctx, hold, at, HoldStatus.EXPIRED, repay=False))
    last = next((posting for posting in reversed(freed) if posting is not None), None)
    repaid = _repay_debt(book, at)
    if repaid:
        if last is None:
            raise InvariantViolation("debt repaid although no points became spendable")
        # The repayment rides on the last posting of the instant (allocations only: the
        # member's available account already went up by what was freed).
        index = book.postings.index(last)
        book.postings[index] = replace(last, allocations=(*last.allocations, *repaid))
    for lot in sorted(book.lots.values(), key=Lot.sort_key):
        if lot.matured and lot.remaining > 0 and lot.expires_at == moment:
            _expire(book, ctx, lot, at)


def settle_due(book: MemberBook, ctx: Context) -> None:
    """Apply every time-driven change due by `ctx.now`, instant by instant, in order."""
    while (moment := _next_due(book, ctx.now)) is not None:
        _settle_moment(book, ctx, moment)


# -- operations --------------------------------------------------------------------------------


def balance(book: MemberBook, now: datetime) -> Balance:
    """The member's balance at `now`; the book must be settled to `now` first."""
    pending = sum(lot.remaining for lot in book.lots.values() if not lot.matured)
    held = sum(hold.points for hold in book.holds.values() if hold.status is HoldStatus.OPEN)
    expiring: dict[datetime, int] = {}
    for lot in sorted(book.lots.values(), key=Lot.sort_key):
        if lot.remaining > 0 and lot.expires_at > now:
            expiring[lot.expires_at] = expiring.get(lot.expires_at, 0) + lot.remaining
    soonest = sorted(expiring.items())[:EXPIRING_LOTS_SHOWN_MAX]
    return Balance(
        member_id=book.member_id,
        available=_available(book, now),
        held=held,
        pending=pending,
        expiring=tuple(ExpiringPoints(points, at) for at, points in soonest),
        as_of=now,
    )


def points_for_purchase(amount: Decimal, currency: str, terms: PartnerTerms) -> int:
    """floor(amount x the partner's earn rate for the currency)."""
    rate = terms.earn_rates.get(currency)
    if rate is None:
        raise CurrencyNotSupported(
            f"Partner {terms.partner_id} has no earn rate for {currency}; "
            f"rates exist for: {', '.join(sorted(terms.earn_rates)) or 'none'}."
        )
    points = int((amount * rate).to_integral_value(rounding=ROUND_FLOOR))
    if points < 1:
        raise Unprocessable(f"A purchase of {amount} {currency} earns no points.")
    if points > POINTS_PER_REQUEST_MAX:
        raise Unprocessable(f"A purchase may earn at most {POINTS_PER_REQUEST_MAX} points.")
    return points


def _earn_dates(
    ctx: Context, available_at: datetime | None, expires_at: datetime | None
) -> tuple[datetime, datetime]:
    latest_expiry = ctx.now + ctx.points_ttl
    available = max(available_at or ctx.now, ctx.now)
    if available >= latest_expiry:
        raise Unprocessable("available_at must be before the points' default expiry.")
    if expires_at is None:
        return available, latest_expiry
    if expires_at <= available:
        raise Unprocessable("expires_at must be later than available_at and than now.")
    if expires_at > latest_expiry:
        raise Unprocessable(
            f"expires_at may not be later than the coalition default ({latest_expiry:%Y-%m-%d})."
        )
    return available, expires_at


def earn(
    book: MemberBook,
    ctx: Context,
    partner: PartnerState,
    points: int,
    *,
    reference: str | None,
    available_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> Posting:
    """Issue `points` to the member as a new lot (pending until `available_at`)."""
    terms = partner.terms
    available, expiry = _earn_dates(ctx, available_at, expires_at)
    value = terms.issue_price * points
    if terms.credit_limit is not None:
        exposure = terms.exposure + partner.exposure_added + value
        if exposure > terms.credit_limit:
            raise CreditLimitExceeded(
                f"Issuing {points} points would bring unsettled issuance to {exposure} "
                f"{terms.settlement_currency}, over the credit limit of {terms.credit_limit}."
            )
    posting_id = ctx.ids()
    matured = available <= ctx.now
    lot = Lot(
        lot_id=ctx.ids(),
        member_id=book.member_id,
        issuer_id=terms.partner_id,
        earn_id=posting_id,
        initial=points,
        remaining=points,
        unit_price=terms.issue_price,
        available_at=available,
        expires_at=expiry,
        matured=matured,
        created_at=ctx.now,
    )
    book.lots[lot.lot_id] = lot
    book.new_lots.add(lot.lot_id)
    partner.exposure_added += value
    repaid = _repay_debt(book, ctx.now) if matured else []
    account = Account.AVAILABLE if matured else Account.PENDING
    return _record(
        book,
        Posting(
            posting_id=posting_id,
            type=PostingType.EARN,
            member_id=book.member_id,
            partner_id=terms.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                Entry(Account.ISSUED, terms.partner_id, -points),
                _member(book, account, points),
            ),
            allocations=tuple(repaid),
            reference=reference,
            unit_price=terms.issue_price,
            currency=terms.settlement_currency,
            available_at=available,
            expires_at=expiry,
        ),
    )


def _require_available(book: MemberBook, ctx: Context, points: int) -> list[Lot]:
    available = _available(book, ctx.now)
    if available < 0:
        raise InsufficientPoints(
            f"The balance is negative ({available} points) after a reversal; "
            "burns are refused until later earns repay it."
        )
    if points > available:
        raise InsufficientPoints(f"{available} points available, {points} asked.")
    return book.spendable(ctx.now)


def burn(
    book: MemberBook, ctx: Context, partner: PartnerState, points: int, *, reference: str | None
) -> Posting:
    """Redeem points with the partner, soonest-expiring lots first."""
    lots = _require_available(book, ctx, points)
    terms = partner.terms
    return _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.BURN,
            member_id=book.member_id,
            partner_id=terms.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                _member(book, Account.AVAILABLE, -points),
                Entry(Account.REDEEMED, terms.partner_id, points),
            ),
            allocations=tuple(_draw(lots, points)),
            reference=reference,
            unit_price=terms.redemption_value,
            currency=terms.settlement_currency,
        ),
    )


def open_hold(
    book: MemberBook,
    ctx: Context,
    partner: PartnerState,
    points: int,
    *,
    reference: str | None,
    expires_in_s: int = HOLD_EXPIRES_IN_S_DEFAULT,
) -> Hold:
    """Reserve points from the soonest-expiring lots: available falls, held rises."""
    if not 1 <= expires_in_s <= HOLD_EXPIRES_IN_S_MAX:
        raise Unprocessable(f"expires_in must be between 1 and {HOLD_EXPIRES_IN_S_MAX} seconds.")
    lots = _require_available(book, ctx, points)
    allocations = _draw(lots, points)
    hold = Hold(
        hold_id=ctx.ids(),
        member_id=book.member_id,
        partner_id=partner.partner_id,
        points=points,
        status=HoldStatus.OPEN,
        created_at=ctx.now,
        expires_at=ctx.now + timedelta(seconds=expires_in_s),
        reference=reference,
        draws=[(allocation.lot_id, allocation.points) for allocation in allocations],
    )
    book.holds[hold.hold_id] = hold
    book.new_holds.add(hold.hold_id)
    _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.HOLD,
            member_id=book.member_id,
            partner_id=partner.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                _member(book, Account.AVAILABLE, -points),
                _member(book, Account.HELD, points),
            ),
            allocations=tuple(allocations),
            reference=reference,
            hold_id=hold.hold_id,
        ),
    )
    return hold


def _open_hold_of(book: MemberBook, hold_id: uuid.UUID) -> Hold:
    hold = book.holds[hold_id]
    if hold.status is not HoldStatus.OPEN:
        raise HoldNotOpen(f"Hold is {hold.status.value}.")
    return hold


def capture_hold(
    book: MemberBook, ctx: Context, partner: PartnerState, hold_id: uuid.UUID, points: int | None
) -> Posting:
    """Burn `points` (default all) of an open hold; the rest returns to the member."""
    hold = _open_hold_of(book, hold_id)
    captured = hold.points if points is None else points
    if captured > hold.points:
        raise Unprocessable(f"Cannot capture {captured} points of a {hold.points}-point hold.")
    released = [_release(book.lots[lot_id], held) for lot_id, held in hold.draws]
    # Burn from each lot at most what the hold reserved there, in the hold's order: points
    # of the same lot that the hold never reserved are not the hold's to spend.
    burned: list[Allocation] = []
    left = captured
    for lot_id, reserved in hold.draws:
        take = min(reserved, left)
        if take:
            burned += _draw([book.lots[lot_id]], take)
            left -= take
    rest = hold.points - captured
    repaid = _repay_debt(book, ctx.now) if rest else []
    entries = [
        _member(book, Account.HELD, -hold.points),
        Entry(Account.REDEEMED, partner.partner_id, captured),
    ]
    if rest:
        entries.append(_member(book, Account.AVAILABLE, rest))
    terms = partner.terms
    posting = _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.BURN,
            member_id=book.member_id,
            partner_id=partner.partner_id,
            points=captured,
            posted_at=ctx.now,
            entries=tuple(entries),
            allocations=(*released, *burned, *repaid),
            reference=hold.reference,
            hold_id=hold.hold_id,
            unit_price=terms.redemption_value,
            currency=terms.settlement_currency,
        ),
    )
    hold.status = HoldStatus.CAPTURED
    hold.captured_points = captured
    hold.transaction_id = posting.posting_id
    hold.closed_at = ctx.now
    book.changed_holds.add(hold.hold_id)
    _expire_released(book, ctx, (lot_id for lot_id, _ in hold.draws), ctx.now)
    return posting


def void_hold(book: MemberBook, ctx: Context, hold_id: uuid.UUID) -> Hold:
    hold = _open_hold_of(book, hold_id)
    _release_hold(book, ctx, hold, ctx.now, HoldStatus.VOIDED)
    return hold


def _reversal_points(original: OriginalPosting, points: int | None) -> int:
    if original.type not in (PostingType.EARN, PostingType.BURN):
        raise NotReversible(f"A {original.type.value} cannot be reversed.")
    left = original.points - original.reversed_points
    wanted = left if points is None else points
    if wanted > left or left == 0:
        raise ReversalExceedsOriginal(
            f"{original.points} points were posted and {original.reversed_points} already "
            f"reversed; {wanted} more would exceed the original."
        )
    return wanted


def reverse(
    book: MemberBook,
    ctx: Context,
    partner: PartnerState,
    original: OriginalPosting,
    points: int | None,
    *,
    reference: str | None,
) -> Posting:
    """Reverse an earn (a return) or a burn (a refund), in whole or in part."""
    amount = _reversal_points(original, points)
    if original.type is PostingType.EARN:
        return _reverse_earn(book, ctx, partner, original, points=amount, reference=reference)
    return _reverse_burn(book, ctx, original, points=amount, reference=reference)


def _reverse_earn(
    book: MemberBook,
    ctx: Context,
    partner: PartnerState,
    original: OriginalPosting,
    *,
    points: int,
    reference: str | None,
) -> Posting:
    """Take the points back from the earn's lot; a shortfall comes from the member's
    other available points, and what is still missing becomes a negative balance."""
    if original.lot_id is None:
        raise InvariantViolation(f"earn {original.posting_id} has no lot")
    lot = book.lots[original.lot_id]
    from_lot = min(points, lot.remaining)
    entries = [Entry(Account.ISSUED, original.partner_id, points)]
    allocations = _draw([lot], from_lot)
    if from_lot:
        account = Account.AVAILABLE if lot.matured else Account.PENDING
        entries.append(_member(book, account, -from_lot))
    shortfall = points - from_lot
    if shortfall:
        others = book.spendable(ctx.now)
        from_others = min(shortfall, sum(other.remaining for other in others))
        allocations += _draw(others, from_others)
        book.debt += shortfall - from_others
        entries.append(_member(book, Account.AVAILABLE, -shortfall))
    partner.exposure_added -= original.unit_price * points
    return _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.EARN_REVERSAL,
            member_id=book.member_id,
            partner_id=original.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=tuple(entries),
            allocations=tuple(allocations),
            reference=reference,
            reverses=original.posting_id,
            unit_price=original.unit_price,
            currency=original.currency,
        ),
    )


def _reverse_burn(
    book: MemberBook,
    ctx: Context,
    original: OriginalPosting,
    *,
    points: int,
    reference: str | None,
) -> Posting:
    """Return the points to the lots the burn drew them from, latest-expiring first, with
    their original expiry dates (points returned to an expired lot expire at once)."""
    released = []
    left = points
    for lot_id, drawn in reversed(original.draws):
        take = min(drawn - original.restored.get(lot_id, 0), left)
        if take > 0:
            released.append(_release(book.lots[lot_id], take))
            left -= take
    if left:
        raise InvariantViolation(f"burn {original.posting_id} drew fewer points than it posted")
    repaid = _repay_debt(book, ctx.now)
    posting = _record(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.BURN_REVERSAL,
            member_id=book.member_id,
            partner_id=original.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                Entry(Account.REDEEMED, original.partner_id, -points),
                _member(book, Account.AVAILABLE, points),
            ),
            allocations=(*released, *repaid),
            reference=reference,
            reverses=original.posting_id,
            unit_price=original.unit_price,
            currency=original.currency,
        ),
    )
    _expire_released(book, ctx, (allocation.lot_id for allocation in released), ctx.now)
    return posting
