"""The ledger's data: accounts, entries, postings, lots, holds, and a member's book.

Everything here is plain data with no I/O. Points are `int`, prices `Decimal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec

from exchange.errors import InvariantViolation

if TYPE_CHECKING:  # ids are values here: the core never makes one (see `IdFactory`)
    import uuid

__all__ = [
    "Account",
    "Allocation",
    "AllocationKind",
    "Balance",
    "BalanceAfter",
    "Effect",
    "Entry",
    "ExpiringPoints",
    "Hold",
    "HoldStatus",
    "IdFactory",
    "Lot",
    "MemberBook",
    "PartnerTerms",
    "Posting",
    "PostingType",
]

POINTS_PER_REQUEST_MAX = 10**12
EXPIRING_LOTS_SHOWN_MAX = 5


class PostingType(StrEnum):
    """What a posting records. The first four are the transactions partners see."""

    EARN = "earn"
    BURN = "burn"
    EARN_REVERSAL = "earn_reversal"
    BURN_REVERSAL = "burn_reversal"
    HOLD = "hold"  # points reserved: available -> held
    HOLD_RELEASE = "hold_release"  # a void or an expired hold: held -> available
    EXPIRY = "expiry"  # breakage: available -> issuer's breakage
    MATURATION = "maturation"  # pending -> available once available_at passes
    ADJUSTMENT = "adjustment"  # an operator's four-eyes correction: issuer <-> available
    TRANSFER_OUT = "transfer_out"  # member to member: the sender's side
    TRANSFER_IN = "transfer_in"  # member to member: the recipient's side


PARTNER_TRANSACTION_TYPES = frozenset(
    {PostingType.EARN, PostingType.BURN, PostingType.EARN_REVERSAL, PostingType.BURN_REVERSAL}
)


class Account(StrEnum):
    """Journal accounts. Member accounts hold the member's points (positive balances);
    partner accounts are their counterparts, so every posting sums to zero."""

    AVAILABLE = "available"  # member
    HELD = "held"  # member
    PENDING = "pending"  # member
    ISSUED = "issued"  # partner: minus the points it has issued
    REDEEMED = "redeemed"  # partner: the points burned with it
    BREAKAGE = "breakage"  # partner (issuer): its points that expired
    ADJUSTED = "adjusted"  # partner or operator: the counterpart of adjustments
    TRANSFER = "transfer"  # clearing, owned by one transfer: out credits it, in debits it


MEMBER_ACCOUNTS = frozenset({Account.AVAILABLE, Account.HELD, Account.PENDING})


class AllocationKind(StrEnum):
    DRAW = "draw"  # points leave the lot: spent, reserved, reversed or expired
    RELEASE = "release"  # points return to the lot (a void, a refund, a capture's rest)
    REPAY = "repay"  # points leave the lot to cover the member's negative balance


class HoldStatus(StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


class Entry(msgspec.Struct, frozen=True):
    account: Account
    owner: str  # member_id or partner_id
    amount: int  # signed; a posting's entries sum to zero


class Allocation(msgspec.Struct, frozen=True):
    """A change to one lot's remaining points, made by one posting."""

    lot_id: uuid.UUID
    kind: AllocationKind
    points: int  # > 0; DRAW and REPAY subtract it from the lot, RELEASE adds it back

    @property
    def delta(self) -> int:
        return self.points if self.kind is AllocationKind.RELEASE else -self.points


class Posting(msgspec.Struct, frozen=True):
    """One balanced journal posting: its entries sum to zero."""

    posting_id: uuid.UUID
    type: PostingType
    member_id: str
    partner_id: str | None
    points: int
    posted_at: datetime
    entries: tuple[Entry, ...]
    allocations: tuple[Allocation, ...] = ()
    reference: str | None = None
    reverses: uuid.UUID | None = None
    hold_id: uuid.UUID | None = None
    unit_price: Decimal | None = None  # issue price (earns) or redemption value (burns)
    currency: str | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None
    terms_version: int | None = None  # the partner terms the price came from
    purchase_amount: Decimal | None = None  # earns: what the points were for (disputes)
    purchase_currency: str | None = None


@dataclass(slots=True)
class Lot:
    """The points of one earn: its issuer, price and dates, and what is left of it."""

    lot_id: uuid.UUID
    member_id: str
    issuer_id: str
    earn_id: uuid.UUID
    initial: int
    remaining: int
    unit_price: Decimal
    available_at: datetime
    expires_at: datetime
    matured: bool  # True once its points sit in the member's available account
    created_at: datetime
    source_lot_id: uuid.UUID | None = None  # a transferred lot: the sender's lot it came from

    def spendable_at(self, at: datetime) -> bool:
        """Whether the lot has points that can be spent at `at`."""
        return self.remaining > 0 and self.matured and self.expires_at > at

    def sort_key(self) -> tuple[datetime, datetime, uuid.UUID]:
        """Spending order: soonest-expiring first, ties oldest first."""
        return (self.expires_at, self.created_at, self.lot_id)


@dataclass(slots=True)
class Hold:
    hold_id: uuid.UUID
    member_id: str
    partner_id: str
    points: int
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    reference: str | None
    draws: list[tuple[uuid.UUID, int]]  # (lot, points) reserved, in spending order
    captured_points: int | None = None
    transaction_id: uuid.UUID | None = None  # the burn a capture created
    closed_at: datetime | None = None


class Effect(msgspec.Struct, frozen=True):
    """What one operation did: every posting rule returns one, whatever it changed.

    `posting` records the operation itself (the earn, the burn, the reversal, the burn a
    capture made, a hold's reservation or its release): the request's idempotency key and
    signature point at it, and it carries the balance after. `hold` is the hold the
    operation opened, captured or voided. `postings` is everything the operation recorded,
    in order: `posting` first, then any breakage of released points whose lot had expired.
    """

    posting: Posting
    postings: tuple[Posting, ...]
    hold: Hold | None = None

    @property
    def primary(self) -> Posting | Hold:
        """The object the operation is about: its hold, else its transaction."""
        return self.hold if self.hold is not None else self.posting


class PartnerTerms(msgspec.Struct, frozen=True):
    """A partner's terms in force at the moment of posting."""

    partner_id: str
    active: bool
    settlement_currency: str
    issue_price: Decimal
    redemption_value: Decimal
    earn_rates: dict[str, Decimal]
    credit_limit: Decimal | None
    exposure: Decimal  # unsettled issuance value before this batch (for the credit limit)
    version: int | None = None  # partners.terms_version read with these terms
    terminated: bool = False
    # purchase earns, by tier
    tier_multipliers: dict[str, Decimal] = msgspec.field(default_factory=dict)


class ExpiringPoints(msgspec.Struct, frozen=True):
    points: int
    expires_at: datetime


class BalanceAfter(msgspec.Struct, frozen=True):
    """A member's totals right after a posting: what the posting's row and its answer
    carry. (A `Balance` adds the soonest expiring points, which only a balance read shows.)"""

    available: int
    held: int
    pending: int


class Balance(msgspec.Struct, frozen=True):
    member_id: str
    available: int
    held: int
    pending: int
    expiring: tuple[ExpiringPoints, ...]
    as_of: datetime


@dataclass(slots=True)
class MemberBook:
    """A member's sub-ledger loaded under its row lock: the working copy the rules change.

    `debt` is the shortfall of earn reversals that found the points already spent; the
    invariant kept by the rules is: debt > 0 implies no spendable lot has points left
    (points that become spendable repay the debt first).

    `unloaded` is non-zero only in a partial book: the points of the lots the store left
    out because no earn can touch them (matured, with points left, expiring after every
    moment the book is used at; the member owes no debt and has no open hold).
    `unloaded_expiring` is their sums on their soonest expiry dates, as many dates as a
    balance lists. They count in the available points and the expiring list; `spendable`
    refuses a partial book, so a rule that draws on lots (a burn, a hold, a transfer, a
    reversal) can never run on one.
    """

    member_id: str
    debt: int
    lots: dict[uuid.UUID, Lot] = field(default_factory=dict)
    holds: dict[uuid.UUID, Hold] = field(default_factory=dict)
    postings: list[Posting] = field(default_factory=list)
    new_lots: set[uuid.UUID] = field(default_factory=set)
    new_holds: set[uuid.UUID] = field(default_factory=set)
    changed_holds: set[uuid.UUID] = field(default_factory=set)
    matured_lots: set[uuid.UUID] = field(default_factory=set)
    initial_debt: int = -1
    unloaded: int = 0
    unloaded_expiring: dict[datetime, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.initial_debt < 0:
            self.initial_debt = self.debt

    def spendable(self, at: datetime) -> list[Lot]:
        """Lots whose points can be spent at `at`, in spending order."""
        if self.unloaded:
            raise InvariantViolation(
                f"member {self.member_id}'s book is partial: no rule may draw on its lots"
            )
        lots = [lot for lot in self.lots.values() if lot.spendable_at(at)]
        lots.sort(key=Lot.sort_key)
        return lots


IdFactory = Callable[[], "uuid.UUID"]
"""Where the rules' new ids come from. The caller passes one in (`Context.ids`): the core
reads no clock and no entropy, so a test can hand it a counter and get the same book twice.
The exchange's generator is `exchange.ids.new_id`."""
