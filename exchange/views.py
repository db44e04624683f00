"""Rendering ledger objects and stored rows as the contract's wire structs."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import msgspec

from exchange import schemas
from exchange.ids import format_hold_id, format_transaction_id
from exchange.ledger import Balance, Hold, Posting

__all__ = [
    "balance_view",
    "decode_cursor",
    "encode_cursor",
    "hold_from_row",
    "hold_view",
    "transaction_from_row",
    "transaction_view",
]


def _after(balance: Balance) -> schemas.BalanceAfter:
    return schemas.BalanceAfter(
        available=balance.available, held=balance.held, pending=balance.pending
    )


def transaction_view(posting: Posting, after: Balance) -> schemas.Transaction:
    return schemas.Transaction(
        transaction_id=format_transaction_id(posting.posting_id),
        type=posting.type.value,
        partner_id=posting.partner_id or "",
        member_id=posting.member_id,
        points=posting.points,
        reference=posting.reference,
        posted_at=posting.posted_at,
        balance_after=_after(after),
        reverses=format_transaction_id(posting.reverses) if posting.reverses else msgspec.UNSET,
        hold_id=format_hold_id(posting.hold_id) if posting.hold_id else msgspec.UNSET,
    )


def transaction_from_row(row: Any) -> schemas.Transaction:
    """A stored posting (postings row) as a transaction object."""
    after: schemas.BalanceAfter | msgspec.UnsetType = msgspec.UNSET
    if row.available_after is not None:
        after = schemas.BalanceAfter(
            available=row.available_after, held=row.held_after, pending=row.pending_after
        )
    return schemas.Transaction(
        transaction_id=format_transaction_id(row.posting_id),
        type=row.type,
        partner_id=row.partner_id or "",
        member_id=row.member_id,
        points=row.points,
        reference=row.reference,
        posted_at=row.posted_at,
        balance_after=after,
        reverses=format_transaction_id(row.reverses) if row.reverses else msgspec.UNSET,
        hold_id=format_hold_id(row.hold_id) if row.hold_id else msgspec.UNSET,
    )


def hold_view(hold: Hold) -> schemas.Hold:
    return schemas.Hold(
        hold_id=format_hold_id(hold.hold_id),
        status=hold.status.value,
        points=hold.points,
        member_id=hold.member_id,
        partner_id=hold.partner_id,
        reference=hold.reference,
        created_at=hold.created_at,
        expires_at=hold.expires_at,
        transaction_id=(
            format_transaction_id(hold.transaction_id) if hold.transaction_id else msgspec.UNSET
        ),
        captured_points=(
            hold.captured_points if hold.captured_points is not None else msgspec.UNSET
        ),
        closed_at=hold.closed_at if hold.closed_at is not None else msgspec.UNSET,
    )


def balance_view(balance: Balance, tier: schemas.Tier | None = None) -> schemas.Balance:
    return schemas.Balance(
        tier=msgspec.UNSET if tier is None else tier,
        member_id=balance.member_id,
        available=balance.available,
        held=balance.held,
        pending=balance.pending,
        expiring=[
            schemas.Expiring(points=item.points, expires_at=item.expires_at)
            for item in balance.expiring
        ],
        as_of=balance.as_of,
    )


def hold_from_row(row: Any, now: datetime) -> schemas.Hold:
    """A stored hold; an open hold past its expiry shows as expired (as it is released)."""
    status = row.status
    if status == "open" and row.expires_at <= now:
        status = "expired"
    return schemas.Hold(
        hold_id=format_hold_id(row.hold_id),
        status=status,
        points=row.points,
        member_id=row.member_id,
        partner_id=row.partner_id,
        reference=row.reference,
        created_at=row.created_at,
        expires_at=row.expires_at,
        transaction_id=(
            format_transaction_id(row.transaction_id) if row.transaction_id else msgspec.UNSET
        ),
        captured_points=row.captured_points if row.captured_points is not None else msgspec.UNSET,
        closed_at=row.closed_at if row.closed_at is not None else msgspec.UNSET,
    )


def encode_cursor(posted_at: datetime, posting_id: uuid.UUID) -> str:
    raw = f"{posted_at.isoformat()}|{posting_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID] | None:
    """The position a cursor points at, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, hex_id = raw.partition("|")
        return datetime.fromisoformat(moment), uuid.UUID(hex=hex_id)
    except (ValueError, UnicodeDecodeError):
        return None
