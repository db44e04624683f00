"""Wire structs of the members API (contract §11)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from exchange.schemas import BalanceAfter, MemberId, Points, Tier

__all__ = ["Erased", "MemberExport", "TransferCreate", "TransferLot", "TransferOut"]


class TransferCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to_member_id: MemberId
    points: Points


class TransferLot(msgspec.Struct, frozen=True):
    """Points that moved from one lot: they keep their issuer and expiry."""

    issuer: str
    points: int
    expires_at: datetime


class TransferOut(msgspec.Struct, frozen=True):
    """The sender's side of a transfer, shaped like a transaction object."""

    transaction_id: str  # the sender's transfer_out posting
    type: str  # "transfer_out"
    transfer_id: str
    member_id: str
    to_member_id: str
    points: int
    posted_at: datetime
    lots: list[TransferLot]
    balance_after: BalanceAfter


class Erased(msgspec.Struct, frozen=True):
    member_id: str
    status: str
    erased_at: datetime


class MemberExport(msgspec.Struct, frozen=True):
    """Everything held about one member (GDPR access), one section per kind of record."""

    member_id: str
    exported_at: datetime
    member: dict[str, Any]
    balance: dict[str, Any]
    tier: Tier
    links: list[dict[str, Any]]
    references: list[dict[str, Any]]
    history: list[dict[str, Any]]
    lots: list[dict[str, Any]]
    holds: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    adjustments: list[dict[str, Any]]
