"""Time-driven changes: pending points maturing, holds expiring, lots expiring.

`apply_due` applies them before any operation (see the rules' contract in
`_operations`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from exchange.errors import InvariantViolation
from exchange.ledger._common import (
    Context,
    expire_lot,
    expire_released,
    member_entry,
    record_posting,
    release_lot,
    repay_debt,
)
from exchange.ledger._model import Account, Hold, HoldStatus, Lot, MemberBook, Posting, PostingType

__all__ = ["apply_due", "release_hold"]


# -- time-driven changes -----------------------------------------------------------------------


def _mature(book: MemberBook, ctx: Context, lot: Lot, at: datetime) -> Posting | None:
    """Pending points become available (any debt is repaid by the caller afterwards)."""
    lot.matured = True
    book.matured_lots.add(lot.lot_id)
    points = lot.remaining
    if points == 0:
        return None
    return record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.MATURATION,
            member_id=book.member_id,
            partner_id=lot.issuer_id,
            points=points,
            posted_at=at,
            entries=(
                member_entry(book, Account.PENDING, -points),
                member_entry(book, Account.AVAILABLE, points),
            ),
        ),
    )


def release_hold(
    book: MemberBook,
    ctx: Context,
    hold: Hold,
    at: datetime,
    status: HoldStatus,
    *,
    repay: bool = True,
) -> Posting:
    """Reserved points return to their lots (those already expired expire at once)."""
    released = [release_lot(book.lots[lot_id], points) for lot_id, points in hold.draws]
    hold.status = status
    hold.closed_at = at
    book.changed_holds.add(hold.hold_id)
    repaid = repay_debt(book, at) if repay else []
    posting = record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.HOLD_RELEASE,
            member_id=book.member_id,
            partner_id=hold.partner_id,
            points=hold.points,
            posted_at=at,
            entries=(
                member_entry(book, Account.HELD, -hold.points),
                member_entry(book, Account.AVAILABLE, hold.points),
            ),
            allocations=(*released, *repaid),
            hold_id=hold.hold_id,
        ),
    )
    expire_released(book, ctx, (lot_id for lot_id, _ in hold.draws), at)
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


def _apply_moment(book: MemberBook, ctx: Context, moment: datetime) -> None:
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
        freed.append(release_hold(book, ctx, hold, at, HoldStatus.EXPIRED, repay=False))
    last = next((posting for posting in reversed(freed) if posting is not None), None)
    repaid = repay_debt(book, at)
    if repaid:
        if last is None:
            raise InvariantViolation("debt repaid although no points became spendable")
        # The repayment rides on the last posting of the instant (allocations only: the
        # member's available account already went up by what was freed).
        index = book.postings.index(last)
        allocations = (*last.allocations, *repaid)
        book.postings[index] = msgspec.structs.replace(last, allocations=allocations)
    for lot in sorted(book.lots.values(), key=Lot.sort_key):
        if lot.matured and lot.remaining > 0 and lot.expires_at == moment:
            expire_lot(book, ctx, lot, at)


def apply_due(book: MemberBook, ctx: Context) -> None:
    """Apply every time-driven change due by `ctx.now`, instant by instant, in order."""
    while (moment := _next_due(book, ctx.now)) is not None:
        _apply_moment(book, ctx, moment)
