"""Rendering ledger objects and stored rows as the contract's wire structs.

The HTTP layer's half of the ledger: `render_effect` decides what a posting request
answers (status code and body). The service calls it (as `LedgerService.render`) inside
the database transaction, only to store the answer with the idempotency key.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from exchange import schemas
from exchange.ids import format_hold_id, format_transaction_id
from exchange.ledger import Balance, BalanceAfter, Effect, Hold, HoldStatus, Posting, PostingType
from exchange.money import format_amount

__all__ = [
    "balance_view",
    "decode_cursor",
    "encode_cursor",
    "hold_from_row",
    "hold_view",
    "render_effect",
    "transaction_from_row",
    "transaction_view",
]


def _after(balance: BalanceAfter) -> schemas.BalanceAfter:
    return schemas.BalanceAfter(
        available=balance.available, held=balance.held, pending=balance.pending
    )


_ISSUE_PRICED = (PostingType.EARN.value, PostingType.EARN_REVERSAL.value)
_REDEMPTION_PRICED = (PostingType.BURN.value, PostingType.BURN_REVERSAL.value)


def _plain(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _dispute_fields(
    kind: str,
    unit_price: Decimal | None,
    purchase_amount: Decimal | None,
    purchase_currency: str | None,
) -> dict[str, Any]:
    """The figures a disputed transaction is checked against (contract §8)."""
    fields: dict[str, Any] = {}
    if unit_price is not None and kind in _ISSUE_PRICED:
        fields["issue_price"] = _plain(unit_price)
    if unit_price is not None and kind in _REDEMPTION_PRICED:
        fields["redemption_value"] = _plain(unit_price)
    if purchase_amount is not None and purchase_currency is not None:
        fields["purchase"] = schemas.MoneyOut(
            amount=format_amount(purchase_amount, purchase_currency), currency=purchase_currency
        )
    return fields


def _signed_points(kind: str, points: int, expires_at: datetime | None) -> int:
    """Adjustments are shown signed: a credit creates a lot (so it has an expiry), a
    debit draws on lots (so it has none). Every other type's points are positive."""
    if kind == PostingType.ADJUSTMENT.value and expires_at is None:
        return -points
    return points


def transaction_view(posting: Posting, after: BalanceAfter) -> schemas.Transaction:
    kind = posting.type.value
    return schemas.Transaction(
        transaction_id=format_transaction_id(posting.posting_id),
        type=kind,
        partner_id=posting.partner_id or "",
        member_id=posting.member_id,
        points=_signed_points(kind, posting.points, posting.expires_at),
        reference=posting.reference,
        posted_at=posting.posted_at,
        balance_after=_after(after),
        reverses=format_transaction_id(posting.reverses) if posting.reverses else msgspec.UNSET,
        hold_id=format_hold_id(posting.hold_id) if posting.hold_id else msgspec.UNSET,
        **_dispute_fields(
            kind, posting.unit_price, posting.purchase_amount, posting.purchase_currency
        ),
    )


def render_effect(effect: Effect, after: BalanceAfter) -> tuple[int, bytes]:
    """The answer to a posting request: the hold it opened (201), captured or voided
    (200), or else the transaction it created (201) with the balance after it."""
    if effect.hold is not None:
        hold = effect.hold
        status = 201 if hold.status is HoldStatus.OPEN else 200
        return status, msgspec.json.encode(hold_view(hold))
    return 201, msgspec.json.encode(transaction_view(effect.posting, after))


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
        points=_signed_points(row.type, row.points, row.expires_at),
        reference=row.reference,
        posted_at=row.posted_at,
        balance_after=after,
        reverses=format_transaction_id(row.reverses) if row.reverses else msgspec.UNSET,
        hold_id=format_hold_id(row.hold_id) if row.hold_id else msgspec.UNSET,
        **_dispute_fields(row.type, row.unit_price, row.purchase_amount, row.purchase_currency),
    )


def hold_view(hold: Hold) -> schemas.HoldOut:
    return schemas.HoldOut(
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


def balance_view(balance: Balance, tier: schemas.Tier | None = None) -> schemas.BalanceOut:
    return schemas.BalanceOut(
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


def hold_from_row(row: Any, now: datetime) -> schemas.HoldOut:
    """A stored hold; an open hold past its expiry shows as expired (as it is released)."""
    status = row.status
    if status == "open" and row.expires_at <= now:
        status = "expired"
    return schemas.HoldOut(
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
    """The position a cursor points at, or None when it is not one of ours.

    Only a cursor that `encode_cursor` could have produced is accepted (it must encode
    back to the very same text), so a crafted one with a naive or out-of-range time, or
    a loosely spelled UUID, is refused here instead of failing in PostgreSQL.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, hex_id = raw.partition("|")
        position = datetime.fromisoformat(moment), uuid.UUID(hex=hex_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    if position[0].tzinfo is None or encode_cursor(*position) != cursor:
        return None
    return position
