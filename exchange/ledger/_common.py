"""What every posting rule shares: the context, a partner's state for the batch, a
transaction being reversed, and the helpers that build postings and move points
between lots (draw, release, repay debt, expire).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from exchange.errors import InvariantViolation
from exchange.ledger._model import (
    Account,
    Allocation,
    AllocationKind,
    Effect,
    Entry,
    Hold,
    IdFactory,
    Lot,
    MemberBook,
    PartnerTerms,
    Posting,
    PostingType,
)

if TYPE_CHECKING:  # ids are values here: the core never makes one
    import uuid

__all__ = [
    "Context",
    "OriginalPosting",
    "PartnerState",
    "available_points",
    "draw_lots",
    "effect_of",
    "expire_lot",
    "expire_released",
    "member_entry",
    "record_posting",
    "release_lot",
    "repay_debt",
]


class Context(msgspec.Struct, frozen=True):
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


class OriginalPosting(msgspec.Struct, frozen=True):
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


def record_posting(book: MemberBook, posting: Posting) -> Posting:
    """Append a posting after checking it balances (the database checks it again)."""
    if posting.points <= 0 or sum(entry.amount for entry in posting.entries) != 0:
        raise InvariantViolation(f"unbalanced or empty posting {posting.posting_id}")
    book.postings.append(posting)
    return posting


def effect_of(book: MemberBook, before: int, posting: Posting, hold: Hold | None = None) -> Effect:
    """The effect of an operation that started when the book held `before` postings."""
    if book.postings[before] is not posting:
        raise InvariantViolation(f"posting {posting.posting_id} is not the operation's first")
    return Effect(posting, tuple(book.postings[before:]), hold)


def member_entry(book: MemberBook, account: Account, amount: int) -> Entry:
    return Entry(account, book.member_id, amount)


def draw_lots(
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


def release_lot(lot: Lot, points: int) -> Allocation:
    lot.remaining += points
    if lot.remaining > lot.initial:
        raise InvariantViolation(f"lot {lot.lot_id} would hold more than it was issued")
    return Allocation(lot.lot_id, AllocationKind.RELEASE, points)


def repay_debt(book: MemberBook, at: datetime) -> list[Allocation]:
    """Points that just became spendable cover a negative balance first."""
    if book.debt == 0:
        return []
    lots = book.spendable(at)
    amount = min(book.debt, sum(lot.remaining for lot in lots))
    book.debt -= amount
    return draw_lots(lots, amount, AllocationKind.REPAY)


def available_points(book: MemberBook, at: datetime) -> int:
    """The points of the book's spendable lots, loaded or not (`MemberBook.unloaded`), less
    the debt (summed: no need to sort)."""
    loaded = sum(lot.remaining for lot in book.lots.values() if lot.spendable_at(at))
    return loaded + book.unloaded - book.debt


def expire_lot(book: MemberBook, ctx: Context, lot: Lot, at: datetime) -> None:
    """Breakage: the lot's remaining points leave the member for the issuer's breakage."""
    points = lot.remaining
    allocation = draw_lots([lot], points)
    account = Account.AVAILABLE if lot.matured else Account.PENDING
    record_posting(
        book,
        Posting(
            posting_id=ctx.ids(),
            type=PostingType.EXPIRY,
            member_id=book.member_id,
            partner_id=lot.issuer_id,
            points=points,
            posted_at=at,
            entries=(
                member_entry(book, account, -points),
                Entry(Account.BREAKAGE, lot.issuer_id, points),
            ),
            allocations=tuple(allocation),
            unit_price=lot.unit_price,
        ),
    )


def expire_released(
    book: MemberBook, ctx: Context, lot_ids: Iterable[uuid.UUID], at: datetime
) -> None:
    """Points returned to a lot that has already expired expire at once."""
    for lot_id in dict.fromkeys(lot_ids):
        lot = book.lots[lot_id]
        if lot.remaining > 0 and lot.expires_at <= at:
            expire_lot(book, ctx, lot, at)
