"""A batch item as the ledger command its single endpoint would have built (same rules)."""

from __future__ import annotations

from datetime import UTC, datetime

from exchange.batches.parse import BurnItem, EarnItem, Item
from exchange.errors import CurrencyNotSupported, TransactionNotFound, Unprocessable
from exchange.ids import parse_transaction_id
from exchange.money import MINOR_UNITS, Money, parse_amount
from exchange.service import Burn, Command, Earn, Reverse

__all__ = ["item_command"]

# Times an item may carry, as exchange.http.wire_time allows for single requests.
_TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)


def item_command(partner_id: str, item: Item) -> Command:
    """The command for an item; a refusal raises the error the single endpoint would."""
    if isinstance(item, EarnItem):
        return _earn(partner_id, item)
    if isinstance(item, BurnItem):
        return Burn(partner_id, item.member_id, item.points, item.reference)
    transaction_id = parse_transaction_id(item.transaction_id)
    if transaction_id is None:
        raise TransactionNotFound()
    return Reverse(partner_id, transaction_id, item.points, item.reference)


def _earn(partner_id: str, item: EarnItem) -> Earn:
    if item.points is None and item.purchase is None:
        raise Unprocessable("Give points, or a purchase to compute them from.")
    purchase: Money | None = None
    if item.purchase is not None:
        if item.purchase.currency not in MINOR_UNITS:
            raise CurrencyNotSupported(f"No earn rate for {item.purchase.currency}.")
        purchase = parse_amount(
            item.purchase.amount, item.purchase.currency, what="purchase.amount"
        )
        if purchase.amount <= 0:
            raise Unprocessable("purchase.amount must be positive.")
    return Earn(
        partner_id,
        item.member_id,
        item.reference,
        points=item.points,
        purchase=purchase,
        available_at=_time(item.available_at, "available_at"),
        expires_at=_time(item.expires_at, "expires_at"),
    )


def _time(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise Unprocessable(f"{what} is out of range.") from None
    if not _TIME_MIN <= moment < _TIME_MAX:
        raise Unprocessable(f"{what} must be between 2000 and 2199 (UTC).")
    return moment
