"""Wire structs of closing the month (contract §8): approvals, documents, payments,
receivables, the journal. Requests are strict (frozen, unknown fields refused)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from exchange.schemas import MoneyIn, MoneyOut

__all__ = [
    "Buckets",
    "DocumentLine",
    "DocumentOut",
    "DocumentPage",
    "Journal",
    "JournalEntryOut",
    "JournalLineOut",
    "JournalTotal",
    "PartnerReceivables",
    "PaymentAllocationOut",
    "PaymentCreate",
    "PaymentOut",
    "ReceivableItem",
    "ReceivablesReport",
    "UnappliedCredits",
]

BankReference = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Out(msgspec.Struct, frozen=True):
    """Base of response bodies."""


class PaymentCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    partner_id: Identifier
    direction: Literal["received", "paid"]
    amount: MoneyIn
    value_date: date
    bank_reference: BankReference
    document_id: Identifier | None = None


class PaymentAllocationOut(_Out, frozen=True):
    document_id: str
    number: str
    amount: MoneyOut


class PaymentOut(_Out, frozen=True):
    payment_id: str
    partner_id: str
    direction: str
    amount: MoneyOut
    value_date: date
    bank_reference: str
    document_id: str | None
    allocations: list[PaymentAllocationOut]
    unapplied: MoneyOut
    created_at: datetime
    created_by: str


class DocumentLine(_Out, frozen=True):
    code: Literal["issuance_charge", "redemption_credit", "net"]
    description: str
    points: int | None
    amount: MoneyOut


class DocumentOut(_Out, frozen=True):
    document_id: str
    number: str
    type: Literal["invoice", "credit_note"]
    run_id: str
    partner_id: str
    partner_name: str
    period_start: datetime
    period_end: datetime
    currency: str
    lines: list[DocumentLine]
    total: MoneyOut  # what the debtor pays: the partner (invoice) or the operator (credit note)
    issue_date: date
    due_date: date
    payment_terms_days: int
    tax_note: str | None
    created_at: datetime
    created_by: str
    amount_open: MoneyOut
    status: Literal["open", "paid"]


class DocumentPage(_Out, frozen=True):
    run_id: str
    items: list[DocumentOut]


class ReceivableItem(_Out, frozen=True):
    document_id: str
    number: str
    type: str
    issue_date: date
    due_date: date
    amount: MoneyOut
    amount_open: MoneyOut
    days_past_due: int
    bucket: str


class Buckets(_Out, frozen=True):
    """Open amounts by days past due at as_of (wire names: not_due, 1_30, 31_60, 61_90,
    over_90, total)."""

    not_due: MoneyOut
    d1_30: MoneyOut = msgspec.field(name="1_30")
    d31_60: MoneyOut = msgspec.field(name="31_60")
    d61_90: MoneyOut = msgspec.field(name="61_90")
    over_90: MoneyOut = msgspec.field(name="over_90")
    total: MoneyOut = msgspec.field(name="total")


class UnappliedCredits(_Out, frozen=True):
    received: MoneyOut  # money the partner paid that no invoice has absorbed yet
    paid: MoneyOut  # money the operator paid that no credit note has absorbed yet


class PartnerReceivables(_Out, frozen=True):
    partner_id: str
    partner_name: str
    currency: str
    documents: list[ReceivableItem]
    totals: Buckets  # open invoices: what the partner owes the operator
    payables: Buckets  # open credit notes: what the operator owes the partner
    unapplied_credits: UnappliedCredits


class ReceivablesReport(_Out, frozen=True):
    as_of: date
    partners: list[PartnerReceivables]


class JournalLineOut(_Out, frozen=True):
    account: str
    account_name: str
    partner_id: str | None
    debit: str
    credit: str


class JournalEntryOut(_Out, frozen=True):
    entry: int
    kind: str
    partner_id: str
    currency: str
    description: str
    lines: list[JournalLineOut]


class JournalTotal(_Out, frozen=True):
    currency: str
    debit: str
    credit: str
    balanced: bool


class Journal(_Out, frozen=True):
    run_id: str
    period_start: datetime
    period_end: datetime
    status: str
    entries: list[JournalEntryOut]
    totals: list[JournalTotal]
