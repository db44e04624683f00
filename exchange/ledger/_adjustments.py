"""Adjustments: an operator's correction of a member's points, approved by four eyes.

A positive adjustment issues a new lot in the issuer's name (a partner, or the operator
itself for goodwill points) with the coalition's default expiry; like an earn it repays a
negative balance first. A negative adjustment takes points back soonest-expiring first,
exactly like a burn, and is refused beyond what the member has available. The journal
counterpart of both is the issuer's `adjusted` account, so adjustments never move the
issued, redeemed or breakage accounts that settlement lines are checked against.
"""

from __future__ import annotations

from exchange.errors import Unprocessable
from exchange.ledger._common import (
    Context,
    PartnerState,
    draw_lots,
    member_entry,
    record_posting,
    repay_debt,
)
from exchange.ledger._model import (
    POINTS_PER_REQUEST_MAX,
    Account,
    Entry,
    Lot,
    MemberBook,
    Posting,
    PostingType,
)
from exchange.ledger._operations import require_available

__all__ = ["adjust"]


def adjust(
    book: MemberBook, ctx: Context, issuer: PartnerState, points: int, *, reference: str | None
) -> Posting:
    """Post a signed adjustment of `points` (never 0) against `issuer`."""
    if points == 0 or abs(points) > POINTS_PER_REQUEST_MAX:
        raise Unprocessable(f"An adjustment moves 1 to {POINTS_PER_REQUEST_MAX} points, + or -.")
    if points > 0:
        return _credit(book, ctx, issuer, points, reference)
    return _debit(book, ctx, issuer, -points, reference)


def _credit(
    book: MemberBook, ctx: Context, issuer: PartnerState, points: int, reference: str | None
) -> Posting:
    terms = issuer.terms
    posting_id = ctx.ids()
    lot = Lot(
        lot_id=ctx.ids(),
        member_id=book.member_id,
        issuer_id=terms.partner_id,
        earn_id=posting_id,
        initial=points,
        remaining=points,
        unit_price=terms.issue_price,
        available_at=ctx.now,
        expires_at=ctx.now + ctx.points_ttl,
        matured=True,
        created_at=ctx.now,
    )
    book.lots[lot.lot_id] = lot
    book.new_lots.add(lot.lot_id)
    repaid = repay_debt(book, ctx.now)
    return record_posting(
        book,
        Posting(
            posting_id=posting_id,
            type=PostingType.ADJUSTMENT,
            member_id=book.member_id,
            partner_id=terms.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                Entry(Account.ADJUSTED, terms.partner_id, -points),
                member_entry(book, Account.AVAILABLE, points),
            ),
            allocations=tuple(repaid),
            reference=reference,
            unit_price=terms.issue_price,
            currency=terms.settlement_currency,
            expires_at=lot.expires_at,
            terms_version=terms.version,
        ),
    )


def _debit(
    book: MemberBook, ctx: Context, issuer: PartnerState, points: int, reference: str | None
) -> Posting:
    lots = require_available(book, ctx, points)
    terms = issuer.terms
    return record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.ADJUSTMENT,
            member_id=book.member_id,
            partner_id=terms.partner_id,
            points=points,
            posted_at=ctx.now,
            entries=(
                member_entry(book, Account.AVAILABLE, -points),
                Entry(Account.ADJUSTED, terms.partner_id, points),
            ),
            allocations=tuple(draw_lots(lots, points)),
            reference=reference,
            unit_price=terms.issue_price,
            currency=terms.settlement_currency,
            terms_version=terms.version,
        ),
    )
