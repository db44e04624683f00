"""Reversals: an earn taken back (a return) or a burn refunded, in whole or in part."""

from __future__ import annotations

from exchange.errors import InvariantViolation, NotReversible, ReversalExceedsOriginal
from exchange.ledger._common import (
    Context,
    OriginalPosting,
    PartnerState,
    draw_lots,
    effect_of,
    expire_released,
    member_entry,
    record_posting,
    release_lot,
    repay_debt,
)
from exchange.ledger._model import Account, Effect, Entry, MemberBook, Posting, PostingType

__all__ = ["reverse"]


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
) -> Effect:
    """Reverse an earn (a return) or a burn (a refund), in whole or in part."""
    amount = _reversal_points(original, points)
    before = len(book.postings)
    if original.type is PostingType.EARN:
        posting = _reverse_earn(book, ctx, partner, original, points=amount, reference=reference)
    else:
        posting = _reverse_burn(book, ctx, original, points=amount, reference=reference)
    return effect_of(book, before, posting)


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
    allocations = draw_lots([lot], from_lot)
    if from_lot:
        account = Account.AVAILABLE if lot.matured else Account.PENDING
        entries.append(member_entry(book, account, -from_lot))
    shortfall = points - from_lot
    if shortfall:
        others = book.spendable(ctx.now)
        from_others = min(shortfall, sum(other.remaining for other in others))
        allocations += draw_lots(others, from_others)
        book.debt += shortfall - from_others
        entries.append(member_entry(book, Account.AVAILABLE, -shortfall))
    partner.exposure_added -= original.unit_price * points
    return record_posting(
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
            released.append(release_lot(book.lots[lot_id], take))
            left -= take
    if left:
        raise InvariantViolation(f"burn {original.posting_id} drew fewer points than it posted")
    repaid = repay_debt(book, ctx.now)
    posting = record_posting(
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
                member_entry(book, Account.AVAILABLE, points),
            ),
            allocations=(*released, *repaid),
            reference=reference,
            reverses=original.posting_id,
            unit_price=original.unit_price,
            currency=original.currency,
        ),
    )
    expire_released(book, ctx, (allocation.lot_id for allocation in released), ctx.now)
    return posting
