"""Rendering ledger objects and stored rows as the contract's wire structs."""

from __future__ import annotations

from typing import Any

import msgspec

from exchange import schemas
from exchange.ids import format_hold_id, format_transaction_id
from exchange.ledger import Balance, Hold, Posting

__all__ = ["balance_view", "hold_view", "transaction_from_row", "transaction_view"]


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
    after = schemas.BalanceAfter(
        available=row.available_after or 0,
        held=row.held_after or 0,
        pending=row.pending_after or 0,
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


def balance_view(balance: Balance) -> schemas.Balance:
    return schemas.Balance(
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
