"""The posting rules: how each operation changes a member's book and which balanced
postings it records. Pure: no I/O, no clock but the one passed in.

Every rule validates first and mutates after, so an operation that raises leaves the
book exactly as it found it. Time-driven changes (pending points maturing, holds
expiring, lots expiring) are applied by `apply_due` before any operation, in the
order they fell due, and stamped with the moment they fell due (never before the
ledger's `closed_until`: a closed settlement period never changes).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from exchange.errors import (
    CreditLimitExceeded,
    CurrencyNotSupported,
    HoldNotOpen,
    InsufficientPoints,
    Unprocessable,
)
from exchange.ledger._common import (
    Context,
    PartnerState,
    available_points,
    draw_lots,
    effect_of,
    expire_released,
    member_entry,
    record_posting,
    release_lot,
    repay_debt,
)
from exchange.ledger._model import (
    EXPIRING_LOTS_SHOWN_MAX,
    POINTS_PER_REQUEST_MAX,
    Account,
    Allocation,
    Balance,
    BalanceAfter,
    Effect,
    Entry,
    ExpiringPoints,
    Hold,
    HoldStatus,
    Lot,
    MemberBook,
    PartnerTerms,
    Posting,
    PostingType,
)
from exchange.ledger._time import release_hold

if TYPE_CHECKING:  # ids are values here: the core never makes one
    import uuid

__all__ = [
    "balance",
    "balance_after",
    "burn",
    "capture_hold",
    "earn",
    "open_hold",
    "points_for_purchase",
    "require_available",
    "void_hold",
]

HOLD_EXPIRES_IN_S_DEFAULT = 900
HOLD_EXPIRES_IN_S_MAX = 604_800


# -- operations --------------------------------------------------------------------------------


def balance_after(book: MemberBook, now: datetime) -> BalanceAfter:
    """The member's totals at `now`, right after a posting; the book must be settled to
    `now` first."""
    return BalanceAfter(
        available=available_points(book, now),
        held=sum(hold.points for hold in book.holds.values() if hold.status is HoldStatus.OPEN),
        pending=sum(lot.remaining for lot in book.lots.values() if not lot.matured),
    )


def balance(book: MemberBook, now: datetime) -> Balance:
    """The member's balance at `now`, with the soonest expiring points; the book must be
    settled to `now` first."""
    totals = balance_after(book, now)
    expiring = {at: points for at, points in book.unloaded_expiring.items() if at > now}
    for lot in book.lots.values():  # summed by date, then sorted by date: any order will do
        if lot.remaining > 0 and lot.expires_at > now:
            expiring[lot.expires_at] = expiring.get(lot.expires_at, 0) + lot.remaining
    soonest = sorted(expiring.items())[:EXPIRING_LOTS_SHOWN_MAX]
    return Balance(
        member_id=book.member_id,
        available=totals.available,
        held=totals.held,
        pending=totals.pending,
        expiring=tuple(ExpiringPoints(points, at) for at, points in soonest),
        as_of=now,
    )


def points_for_purchase(
    amount: Decimal, currency: str, terms: PartnerTerms, tier: str | None = None
) -> int:
    """floor(amount x the partner's earn rate for the currency); then, if the partner has
    a multiplier for the member's tier, floor(those points x the multiplier)."""
    rate = terms.earn_rates.get(currency)
    if rate is None:
        raise CurrencyNotSupported(
            f"Partner {terms.partner_id} has no earn rate for {currency}; "
            f"rates exist for: {', '.join(sorted(terms.earn_rates)) or 'none'}."
        )
    points = int((amount * rate).to_integral_value(rounding=ROUND_FLOOR))
    multiplier = terms.tier_multipliers.get(tier) if tier is not None else None
    if multiplier is not None:
        points = int((points * multiplier).to_integral_value(rounding=ROUND_FLOOR))
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
    purchase: tuple[Decimal, str] | None = None,
) -> Effect:
    """Issue `points` to the member as a new lot (pending until `available_at`);
    `purchase` (amount, currency) is recorded for disputes."""
    before = len(book.postings)
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
    repaid = repay_debt(book, ctx.now) if matured else []
    account = Account.AVAILABLE if matured else Account.PENDING
    posting = record_posting(
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
                member_entry(book, account, points),
            ),
            allocations=tuple(repaid),
            reference=reference,
            unit_price=terms.issue_price,
            currency=terms.settlement_currency,
            available_at=available,
            expires_at=expiry,
            terms_version=terms.version,
            purchase_amount=purchase[0] if purchase else None,
            purchase_currency=purchase[1] if purchase else None,
        ),
    )
    return effect_of(book, before, posting)


def require_available(book: MemberBook, ctx: Context, points: int) -> list[Lot]:
    available = available_points(book, ctx.now)
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
) -> Effect:
    """Redeem points with the partner, soonest-expiring lots first."""
    before = len(book.postings)
    lots = require_available(book, ctx, points)
    terms = partner.terms
    posting = record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.BURN,
            member_id=book.member_id,
            partner_id=terms.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                member_entry(book, Account.AVAILABLE, -points),
                Entry(Account.REDEEMED, terms.partner_id, points),
            ),
            allocations=tuple(draw_lots(lots, points)),
            reference=reference,
            unit_price=terms.redemption_value,
            currency=terms.settlement_currency,
            terms_version=terms.version,
        ),
    )
    return effect_of(book, before, posting)


def open_hold(
    book: MemberBook,
    ctx: Context,
    partner: PartnerState,
    points: int,
    *,
    reference: str | None,
    expires_in_s: int = HOLD_EXPIRES_IN_S_DEFAULT,
) -> Effect:
    """Reserve points from the soonest-expiring lots: available falls, held rises."""
    before = len(book.postings)
    if not 1 <= expires_in_s <= HOLD_EXPIRES_IN_S_MAX:
        raise Unprocessable(f"expires_in must be between 1 and {HOLD_EXPIRES_IN_S_MAX} seconds.")
    lots = require_available(book, ctx, points)
    allocations = draw_lots(lots, points)
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
    posting = record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.HOLD,
            member_id=book.member_id,
            partner_id=partner.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                member_entry(book, Account.AVAILABLE, -points),
                member_entry(book, Account.HELD, points),
            ),
            allocations=tuple(allocations),
            reference=reference,
            hold_id=hold.hold_id,
        ),
    )
    return effect_of(book, before, posting, hold)


def _open_hold_of(book: MemberBook, hold_id: uuid.UUID) -> Hold:
    hold = book.holds[hold_id]
    if hold.status is not HoldStatus.OPEN:
        raise HoldNotOpen(f"Hold is {hold.status.value}.")
    return hold


def capture_hold(
    book: MemberBook, ctx: Context, partner: PartnerState, hold_id: uuid.UUID, points: int | None
) -> Effect:
    """Burn `points` (default all) of an open hold; the rest returns to the member."""
    before = len(book.postings)
    hold = _open_hold_of(book, hold_id)
    captured = hold.points if points is None else points
    if captured > hold.points:
        raise Unprocessable(f"Cannot capture {captured} points of a {hold.points}-point hold.")
    released = [release_lot(book.lots[lot_id], held) for lot_id, held in hold.draws]
    # Burn from each lot at most what the hold reserved there, in the hold's order: points
    # of the same lot that the hold never reserved are not the hold's to spend.
    burned: list[Allocation] = []
    left = captured
    for lot_id, reserved in hold.draws:
        take = min(reserved, left)
        if take:
            burned += draw_lots([book.lots[lot_id]], take)
            left -= take
    rest = hold.points - captured
    repaid = repay_debt(book, ctx.now) if rest else []
    entries = [
        member_entry(book, Account.HELD, -hold.points),
        Entry(Account.REDEEMED, partner.partner_id, captured),
    ]
    if rest:
        entries.append(member_entry(book, Account.AVAILABLE, rest))
    terms = partner.terms
    posting = record_posting(
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
            terms_version=terms.version,
        ),
    )
    hold.status = HoldStatus.CAPTURED
    hold.captured_points = captured
    hold.transaction_id = posting.posting_id
    hold.closed_at = ctx.now
    book.changed_holds.add(hold.hold_id)
    expire_released(book, ctx, (lot_id for lot_id, _ in hold.draws), ctx.now)
    return effect_of(book, before, posting, hold)


def void_hold(book: MemberBook, ctx: Context, hold_id: uuid.UUID) -> Effect:
    """Release an open hold: its points return to the lots they were reserved from."""
    before = len(book.postings)
    hold = _open_hold_of(book, hold_id)
    posting = release_hold(book, ctx, hold, ctx.now, HoldStatus.VOIDED)
    return effect_of(book, before, posting, hold)
