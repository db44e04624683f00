"""Settlement documents, pure: which document a run line becomes, and its number.

A line with net > 0 becomes an invoice (the partner pays the operator), net < 0 a credit
note (the operator pays the partner), net = 0 nothing. The document carries everything a
partner's accounts-payable clerk files, copied at issue, so it never changes afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from settlement.engine import Line

__all__ = [
    "SERIES",
    "Document",
    "DocumentDraft",
    "DocumentKind",
    "PartnerTerms",
    "draft_documents",
    "format_number",
]

DocumentKind = Literal["invoice", "credit_note"]
SERIES: dict[DocumentKind, str] = {"invoice": "INV", "credit_note": "CN"}
SEQUENCE_DIGITS = 6


@dataclass(frozen=True, slots=True)
class PartnerTerms:
    """The partner's terms that a document copies at issue."""

    payment_terms_days: int
    tax_note: str | None


@dataclass(frozen=True, slots=True)
class DocumentDraft:
    """A document before its number is drawn (numbers are drawn in the database)."""

    kind: DocumentKind
    line: Line
    issue_date: date
    due_date: date
    terms: PartnerTerms

    @property
    def series(self) -> str:
        return SERIES[self.kind]


@dataclass(frozen=True, slots=True)
class Document:
    document_id: str
    number: str
    kind: DocumentKind
    run_id: str
    partner_id: str
    partner_name: str
    currency: str
    period_start: datetime
    period_end: datetime
    issued_points: int
    redeemed_points: int
    issuance_charge: Decimal
    redemption_credit: Decimal
    net: Decimal
    amount: Decimal  # |net|: what the debtor pays
    issue_date: date
    due_date: date
    payment_terms_days: int
    tax_note: str | None
    created_at: datetime
    created_by: str
    amount_open: Decimal  # amount less the payments allocated to it (derived, not stored)

    @property
    def status(self) -> str:
        return "paid" if self.amount_open == 0 else "open"


def format_number(series: str, year: int, sequence: int) -> str:
    """INV-2026-000001: the series, the year of issue, the sequence within both."""
    return f"{series}-{year:04d}-{sequence:0{SEQUENCE_DIGITS}d}"


def draft_documents(
    lines: tuple[Line, ...], terms: dict[str, PartnerTerms], issue_date: date
) -> list[DocumentDraft]:
    """One draft per line with net != 0, in the order numbers are drawn: by series, then
    partner. Drawing every run's numbers in one fixed series order keeps two concurrent
    approvals from locking the two counters in opposite orders (a deadlock)."""
    drafts = []
    for line in lines:
        if line.net == 0:
            continue
        kind: DocumentKind = "invoice" if line.net > 0 else "credit_note"
        partner = terms[line.partner_id]
        drafts.append(
            DocumentDraft(
                kind=kind,
                line=line,
                issue_date=issue_date,
                due_date=issue_date + timedelta(days=partner.payment_terms_days),
                terms=partner,
            )
        )
    return sorted(drafts, key=lambda draft: (draft.series, draft.line.partner_id))
