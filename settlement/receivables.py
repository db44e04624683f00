"""Receivables ageing (contract §8), as of any date.

As of a date D: a document counts if issued on or before D; what is open on it is its
amount less the allocations of payments with a value date on or before D; an unapplied
credit is what payments valued on or before D have not allocated. Days past due are
D - due date; buckets: not due (<= 0), 1-30, 31-60, 61-90, over 90.

`age` is pure; `settlement.store.read_open_items` and `read_unapplied` are the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

__all__ = [
    "BUCKETS",
    "AgedItem",
    "OpenDocument",
    "PartnerAgeing",
    "age",
    "bucket_of",
]

BUCKETS = ("not_due", "1_30", "31_60", "61_90", "over_90")
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class OpenDocument:
    document_id: str
    number: str
    kind: str
    partner_id: str
    partner_name: str
    currency: str
    issue_date: date
    due_date: date
    amount: Decimal
    amount_open: Decimal


@dataclass(frozen=True, slots=True)
class AgedItem:
    document: OpenDocument
    days_past_due: int
    bucket: str


@dataclass
class PartnerAgeing:
    partner_id: str
    partner_name: str
    currency: str
    items: list[AgedItem] = field(default_factory=list)
    receivable: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(BUCKETS, ZERO))
    payable: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(BUCKETS, ZERO))
    unapplied_received: Decimal = ZERO
    unapplied_paid: Decimal = ZERO


def bucket_of(days_past_due: int) -> str:
    if days_past_due <= 0:
        return "not_due"
    if days_past_due <= 30:
        return "1_30"
    if days_past_due <= 60:
        return "31_60"
    if days_past_due <= 90:
        return "61_90"
    return "over_90"


def age(
    documents: list[OpenDocument],
    unapplied: dict[tuple[str, str], Decimal],
    names: dict[str, tuple[str, str]],
    as_of: date,
) -> list[PartnerAgeing]:
    """Per partner (by partner_id): open documents aged at `as_of`, bucket totals of
    invoices (receivable) and credit notes (payable), unapplied credits by direction.
    `names` maps partner_id to (name, settlement currency) for partners with credits only."""
    result: dict[str, PartnerAgeing] = {}

    def partner(partner_id: str, name: str, currency: str) -> PartnerAgeing:
        if partner_id not in result:
            result[partner_id] = PartnerAgeing(partner_id, name, currency)
        return result[partner_id]

    for document in sorted(documents, key=lambda d: (d.partner_id, d.due_date, d.number)):
        days = (as_of - document.due_date).days
        item = AgedItem(document, days, bucket_of(days))
        ageing = partner(document.partner_id, document.partner_name, document.currency)
        ageing.items.append(item)
        totals = ageing.receivable if document.kind == "invoice" else ageing.payable
        totals[item.bucket] += document.amount_open
    for (partner_id, direction), amount in sorted(unapplied.items()):
        if amount == 0:
            continue
        ageing = partner(partner_id, *names[partner_id])
        if direction == "received":
            ageing.unapplied_received += amount
        else:
            ageing.unapplied_paid += amount
    return [result[partner_id] for partner_id in sorted(result)]
