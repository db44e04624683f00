"""Wire structs of the partner and member API (contract §3, §5): strict msgspec structs.

Requests are frozen and forbid unknown fields (no mass assignment); msgspec's strict
decoding refuses floats, strings and booleans where an integer is due, and names the
JSON path of the first bad field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from exchange.ids import MEMBER_ID_PATTERN
from exchange.ledger import HOLD_EXPIRES_IN_S_DEFAULT, HOLD_EXPIRES_IN_S_MAX, POINTS_PER_REQUEST_MAX
from exchange.text import UNPRINTABLE_CLASS

__all__ = [
    "REFERENCE_PATTERN",
    "Adjustment",
    "AdjustmentCreate",
    "BalanceAfter",
    "BalanceOut",
    "BurnCreate",
    "EarnCreate",
    "Expiring",
    "HoldCapture",
    "HoldCreate",
    "HoldOut",
    "MemberCreate",
    "MemberCreated",
    "MoneyIn",
    "MoneyOut",
    "NextTier",
    "Points",
    "Reference",
    "ReversalCreate",
    "SessionCreate",
    "SessionCreated",
    "Tier",
    "Transaction",
    "TransactionPage",
]

Points = Annotated[int, msgspec.Meta(ge=1, le=POINTS_PER_REQUEST_MAX)]
# Printable: no C0/C1 controls, DEL, line or paragraph separators, or bidi controls
# (which could make a reference display as something else in a report or a log).
REFERENCE_PATTERN = f"\\A[^{UNPRINTABLE_CLASS}]+\\Z"
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=REFERENCE_PATTERN)]
MemberId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=MEMBER_ID_PATTERN)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{3}\Z")]
DecimalText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class _In(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of request bodies."""


class _Out(msgspec.Struct, frozen=True):
    """Base of response bodies."""


class MoneyIn(_In, frozen=True):
    amount: DecimalText
    currency: CurrencyCode


class MoneyOut(_Out, frozen=True):
    amount: str
    currency: str


class MemberCreate(_In, frozen=True):
    reference: Reference | None = None


class MemberCreated(_Out, frozen=True):
    member_id: str
    created_at: datetime


class SessionCreate(_In, frozen=True):
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] | None = None


class SessionCreated(_Out, frozen=True):
    token: str
    expires_at: datetime


class EarnCreate(_In, frozen=True):
    member_id: MemberId
    reference: Reference
    points: Points | None = None
    purchase: MoneyIn | None = None
    available_at: Time | None = None
    expires_at: Time | None = None


class BurnCreate(_In, frozen=True):
    member_id: MemberId
    points: Points
    reference: Reference | None = None


class HoldCreate(_In, frozen=True):
    member_id: MemberId
    points: Points
    reference: Reference | None = None
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=HOLD_EXPIRES_IN_S_MAX)] = (
        HOLD_EXPIRES_IN_S_DEFAULT
    )


class HoldCapture(_In, frozen=True):
    points: Points | None = None


class ReversalCreate(_In, frozen=True):
    points: Points | None = None
    reference: Reference | None = None


class BalanceAfter(_Out, frozen=True):
    available: int
    held: int
    pending: int


class Transaction(_Out, frozen=True, omit_defaults=True):
    transaction_id: str
    type: str
    partner_id: str
    member_id: str
    points: int
    reference: str | None
    posted_at: datetime
    balance_after: BalanceAfter | msgspec.UnsetType = msgspec.UNSET
    reverses: str | msgspec.UnsetType = msgspec.UNSET
    hold_id: str | msgspec.UnsetType = msgspec.UNSET
    # Disputes (contract §8): what an earn was for and the prices it was charged at.
    purchase: MoneyOut | msgspec.UnsetType = msgspec.UNSET
    issue_price: str | msgspec.UnsetType = msgspec.UNSET  # earns and their reversals
    redemption_value: str | msgspec.UnsetType = msgspec.UNSET  # burns and their reversals


class TransactionPage(_Out, frozen=True):
    items: list[Transaction]
    next: str | None


class HoldOut(_Out, frozen=True, omit_defaults=True):
    hold_id: str
    status: str
    points: int
    member_id: str
    partner_id: str
    reference: str | None
    created_at: datetime
    expires_at: datetime
    transaction_id: str | msgspec.UnsetType = msgspec.UNSET
    captured_points: int | msgspec.UnsetType = msgspec.UNSET
    closed_at: datetime | msgspec.UnsetType = msgspec.UNSET


class Expiring(_Out, frozen=True):
    points: int
    expires_at: datetime


class NextTier(_Out, frozen=True):
    name: str
    points_needed: int


class Tier(_Out, frozen=True, omit_defaults=True):
    name: str
    qualifying_points: int
    next: NextTier | msgspec.UnsetType = msgspec.UNSET


class BalanceOut(_Out, frozen=True, omit_defaults=True):
    member_id: str
    available: int
    held: int
    pending: int
    expiring: list[Expiring]
    as_of: datetime
    tier: Tier | msgspec.UnsetType = msgspec.UNSET


# -- operator adjustments (contract §8) --------------------------------------------------------

SignedPoints = Annotated[int, msgspec.Meta(ge=-POINTS_PER_REQUEST_MAX, le=POINTS_PER_REQUEST_MAX)]
IssuerId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Reason = Annotated[
    str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]+$")
]


class AdjustmentCreate(_In, frozen=True):
    member_id: MemberId
    points: SignedPoints  # + credits the member, - debits; never 0
    issuer: IssuerId  # a partner_id, or "operator" for goodwill points
    reason: Reason


class Adjustment(_Out, frozen=True, omit_defaults=True):
    adjustment_id: str
    status: str  # pending | posted | expired
    member_id: str
    points: int
    issuer: str
    reason: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    approved_by: str | msgspec.UnsetType = msgspec.UNSET
    approved_at: datetime | msgspec.UnsetType = msgspec.UNSET
    transaction_id: str | msgspec.UnsetType = msgspec.UNSET
