"""Payments (contract §8): money received from partners and paid to them, applied to
settlement documents.

Pure part (`allocate`): a payment `received` settles invoices, `paid` settles credit
notes. With a document named, the whole amount goes to it and may not exceed what is
open on it (`overpayment`). Without one, it settles the partner's open documents of that
kind oldest first (issue date, then number); what is left is an unapplied credit.

Store part (`settlement.store`: `lock_partner`, `open_items`, `insert_payment`,
`load_payment`): the partner row is locked first (FOR NO KEY UPDATE, the lock posting
transactions take for credit-limited partners), so two payments for one partner never
allocate the same open amount twice. Allocations to invoices lower the partner's
`receivable_open`, which is what returns credit-limit headroom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from exchange.errors import Unprocessable
from settlement.errors import Overpayment

__all__ = [
    "KIND_FOR",
    "Allocation",
    "Direction",
    "OpenItem",
    "Payment",
    "PaymentPartner",
    "allocate",
]

Direction = Literal["received", "paid"]
KIND_FOR: dict[str, str] = {"received": "invoice", "paid": "credit_note"}


@dataclass(frozen=True, slots=True)
class OpenItem:
    document_id: str
    number: str
    kind: str
    issue_date: date
    amount_open: Decimal


@dataclass(frozen=True, slots=True)
class Allocation:
    document_id: str
    number: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    partner_id: str
    direction: Direction
    amount: Decimal
    currency: str
    value_date: date
    bank_reference: str
    document_id: str | None
    allocations: tuple[Allocation, ...]
    created_at: datetime
    created_by: str

    @property
    def unapplied(self) -> Decimal:
        return self.amount - sum((a.amount for a in self.allocations), Decimal(0))


@dataclass(frozen=True, slots=True)
class PaymentPartner:
    partner_id: str
    currency: str


def allocate(
    amount: Decimal, items: Sequence[OpenItem], *, direction: Direction, document_id: str | None
) -> list[Allocation]:
    """Where `amount` goes; `items` are the partner's documents with something open."""
    kind = KIND_FOR[direction]
    if document_id is not None:
        target = next((item for item in items if item.document_id == document_id), None)
        if target is None:
            raise Overpayment(f"Document {document_id} has nothing left open.")
        if target.kind != kind:
            raise Unprocessable(
                f"Document {target.number} is a {target.kind}; a payment {direction} "
                f"settles a {kind}."
            )
        if amount > target.amount_open:
            raise Overpayment(f"{amount} exceeds the {target.amount_open} open on {target.number}.")
        return [Allocation(target.document_id, target.number, amount)]
    left = amount
    allocations = []
    for item in sorted(items, key=lambda i: (i.issue_date, i.number)):
        if left == 0:
            break
        if item.kind != kind:
            continue
        share = min(left, item.amount_open)
        allocations.append(Allocation(item.document_id, item.number, share))
        left -= share
    return allocations
