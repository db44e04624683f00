"""Member-to-member transfers. Pure, like earns and burns (see `_operations` for the
rules' contract: validate first, mutate after; both books settled to `ctx.now` first).

A transfer is two balanced postings joined by a clearing account owned by the transfer:

    transfer_out (sender)      M1.available -n   transfer[T] +n
    transfer_in  (recipient)   transfer[T] -n    M2.available +n

Points move WITH their lots: the sender's spendable lots are drawn soonest-expiring first
(exactly like a burn) and each draw becomes a new lot of the recipient with the same
issuer, unit price, `available_at` and `expires_at`, naming its source lot. So the
issuer's liability, breakage at expiry and cross-brand attribution of a later burn are
the same as if the sender had kept the points. Transfers are neither issuance nor
redemption: no partner account moves, and they never count as qualifying points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exchange.errors import InvariantViolation, TransferLimitExceeded, Unprocessable
from exchange.ledger._common import Context, draw_lots, member_entry, record_posting, repay_debt
from exchange.ledger._model import Account, Entry, Lot, MemberBook, Posting, PostingType
from exchange.ledger._operations import require_available

if TYPE_CHECKING:  # ids are values here: the core never makes one
    import uuid

__all__ = ["TransferLimits", "transfer"]


@dataclass(frozen=True, slots=True)
class TransferLimits:
    points_per_transfer_max: int
    points_per_30d_max: int


def _check_limits(points: int, sent_30d: int, limits: TransferLimits) -> None:
    if points > limits.points_per_transfer_max:
        raise TransferLimitExceeded(
            f"A transfer may move at most {limits.points_per_transfer_max} points; {points} asked."
        )
    if sent_30d + points > limits.points_per_30d_max:
        raise TransferLimitExceeded(
            f"Transfers may move at most {limits.points_per_30d_max} points in 30 days; "
            f"{sent_30d} already sent, {points} asked."
        )


def transfer(
    sender: MemberBook,
    recipient: MemberBook,
    ctx: Context,
    points: int,
    *,
    clearing_owner: str,
    sent_30d: int,
    limits: TransferLimits,
) -> tuple[Posting, Posting]:
    """Move `points` from sender to recipient with their lots; (transfer_out, transfer_in).

    `sent_30d` is what the sender transferred in the 30 days before `ctx.now`.
    Refused: to oneself (422), over a limit (422 transfer_limit_exceeded), more than the
    sender has available or a negative balance (422 insufficient_points)."""
    if sender.member_id == recipient.member_id:
        raise Unprocessable("A member cannot transfer points to itself.")
    _check_limits(points, sent_30d, limits)
    lots = {lot.lot_id: lot for lot in require_available(sender, ctx, points)}
    drawn = draw_lots(lots.values(), points)
    out_posting = record_posting(
        sender,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.TRANSFER_OUT,
            member_id=sender.member_id,
            partner_id=None,
            points=points,
            posted_at=ctx.now,
            entries=(
                member_entry(sender, Account.AVAILABLE, -points),
                Entry(Account.TRANSFER, clearing_owner, points),
            ),
            allocations=tuple(drawn),
        ),
    )
    in_id = ctx.ids()
    for allocation in drawn:
        source = lots[allocation.lot_id]
        lot = _copy_lot(source, recipient.member_id, allocation.points, in_id, ctx)
        recipient.lots[lot.lot_id] = lot
        recipient.new_lots.add(lot.lot_id)
    # Points arriving are points becoming spendable: they repay a negative balance first.
    repaid = repay_debt(recipient, ctx.now)
    in_posting = record_posting(
        recipient,
        Posting(
            posting_id=in_id,
            type=PostingType.TRANSFER_IN,
            member_id=recipient.member_id,
            partner_id=None,
            points=points,
            posted_at=ctx.now,
            entries=(
                Entry(Account.TRANSFER, clearing_owner, -points),
                member_entry(recipient, Account.AVAILABLE, points),
            ),
            allocations=tuple(repaid),
        ),
    )
    return out_posting, in_posting


def _copy_lot(source: Lot, member_id: str, points: int, in_id: uuid.UUID, ctx: Context) -> Lot:
    """The recipient's lot for `points` drawn from `source`: same issuer, price, dates."""
    if not source.matured or source.expires_at <= ctx.now:
        raise InvariantViolation(f"transferred points of lot {source.lot_id} are not spendable")
    return Lot(
        lot_id=ctx.ids(),
        member_id=member_id,
        issuer_id=source.issuer_id,
        earn_id=in_id,
        initial=points,
        remaining=points,
        unit_price=source.unit_price,
        available_at=source.available_at,
        expires_at=source.expires_at,
        matured=True,
        created_at=ctx.now,
        source_lot_id=source.lot_id,
    )
