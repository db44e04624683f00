"""Wire structs of the partner and member API (contract §3, §5): strict msgspec structs.

Requests are frozen and forbid unknown fields (no mass assignment); msgspec's strict
decoding refuses floats, strings and booleans where an integer is due, and names the
JSON path of the first bad field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from exchange.ledger import HOLD_EXPIRES_IN_S_DEFAULT, HOLD_EXPIRES_IN_S_MAX, POINTS_PER_REQUEST_MAX

__all__ = [
    "Balance",
    "BalanceAfter",
    "BurnCreate",
    "EarnCreate",
    "Expiring",
    "Hold",
    "HoldCapture",
    "HoldCreate",
    "MemberCreate",
    "MemberCreated",
    "MoneyIn",
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
Reference = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
MemberId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
DecimalText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class _In(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of request bodies."""


class _Out(msgspec.Struct, frozen=True):
    """Base of response bodies."""


class MoneyIn(_In):
    amount: DecimalText
    currency: CurrencyCode


class MemberCreate(_In):
    reference: Reference | None = None


class MemberCreated(_Out):
    member_id: str
    created_at: datetime


class SessionCreate(_In):
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] | None = None


class SessionCreated(_Out):
    token: str
    expires_at: datetime


class EarnCreate(_In):
    member_id: MemberId
    reference: Reference
    points: Points | None = None
    purchase: MoneyIn | None = None
    available_at: Time | None = None
    expires_at: Time | None = None


class BurnCreate(_In):
    member_id: MemberId
    points: Points
    reference: Reference | None = None


class HoldCreate(_In):
    member_id: MemberId
    points: Points
    reference: Reference | None = None
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=HOLD_EXPIRES_IN_S_MAX)] = (
        HOLD_EXPIRES_IN_S_DEFAULT
    )


class HoldCapture(_In):
    points: Points | None = None


class ReversalCreate(_In):
    points: Points | None = None
    reference: Reference | None = None


class BalanceAfter(_Out):
    available: int
    held: int
    pending: int


class Transaction(_Out, omit_defaults=True):
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


class TransactionPage(_Out):
    items: list[Transaction]
    next: str | None


class Hold(_Out, omit_defaults=True):
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


class Expiring(_Out):
    points: int
    expires_at: datetime


class NextTier(_Out):
    name: str
    points_needed: int


class Tier(_Out, omit_defaults=True):
    name: str
    qualifying_points: int
    next: NextTier | msgspec.UnsetType = msgspec.UNSET


class Balance(_Out, omit_defaults=True):
    member_id: str
    available: int
    held: int
    pending: int
    expiring: list[Expiring]
    as_of: datetime
    tier: Tier | msgspec.UnsetType = msgspec.UNSET
