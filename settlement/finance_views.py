"""Domain records of closing the month → wire structs and CSV (no I/O)."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

from exchange.money import format_amount
from exchange.schemas import MoneyOut
from settlement import finance_schemas as s
from settlement.documents import Document
from settlement.journal import JournalEntry, totals
from settlement.payments import Payment
from settlement.receivables import PartnerAgeing
from settlement.store import StoredRun

__all__ = [
    "document_view",
    "journal_csv",
    "journal_view",
    "payment_view",
    "receivables_csv",
    "receivables_view",
]


def _money(amount: Decimal, currency: str) -> MoneyOut:
    return MoneyOut(format_amount(amount, currency), currency)


def document_view(document: Document) -> s.DocumentOut:
    c = document.currency
    lines = [
        s.DocumentLine(
            "issuance_charge",
            "Issuance charge (points issued x issue price)",
            document.issued_points,
            _money(document.issuance_charge, c),
        ),
        s.DocumentLine(
            "redemption_credit",
            "Redemption credit (points redeemed x redemption value)",
            document.redeemed_points,
            _money(-document.redemption_credit, c),
        ),
        s.DocumentLine(
            "net", "Net: issuance charge - redemption credit", None, _money(document.net, c)
        ),
    ]
    return s.DocumentOut(
        document_id=document.document_id,
        number=document.number,
        type=document.kind,
        run_id=document.run_id,
        partner_id=document.partner_id,
        partner_name=document.partner_name,
        period_start=document.period_start,
        period_end=document.period_end,
        currency=c,
        lines=lines,
        total=_money(document.amount, c),
        issue_date=document.issue_date,
        due_date=document.due_date,
        payment_terms_days=document.payment_terms_days,
        tax_note=document.tax_note,
        created_at=document.created_at,
        created_by=document.created_by,
        amount_open=_money(document.amount_open, c),
        status="paid" if document.amount_open == 0 else "open",
    )


def payment_view(payment: Payment) -> s.PaymentOut:
    c = payment.currency
    return s.PaymentOut(
        payment_id=payment.payment_id,
        partner_id=payment.partner_id,
        direction=payment.direction,
        amount=_money(payment.amount, c),
        value_date=payment.value_date,
        bank_reference=payment.bank_reference,
        document_id=payment.document_id,
        allocations=[
            s.PaymentAllocationOut(a.document_id, a.number, _money(a.amount, c))
            for a in payment.allocations
        ],
        unapplied=_money(payment.unapplied, c),
        created_at=payment.created_at,
        created_by=payment.created_by,
    )


def _buckets(values: dict[str, Decimal], currency: str) -> s.Buckets:
    def bucket(name: str) -> MoneyOut:
        return _money(values[name], currency)

    return s.Buckets(
        not_due=bucket("not_due"),
        d1_30=bucket("1_30"),
        d31_60=bucket("31_60"),
        d61_90=bucket("61_90"),
        over_90=bucket("over_90"),
        total=_money(sum(values.values(), Decimal(0)), currency),
    )


def receivables_view(as_of: date, ageing: list[PartnerAgeing]) -> s.ReceivablesReport:
    partners = []
    for partner in ageing:
        c = partner.currency
        partners.append(
            s.PartnerReceivables(
                partner_id=partner.partner_id,
                partner_name=partner.partner_name,
                currency=c,
                documents=[
                    s.ReceivableItem(
                        document_id=item.document.document_id,
                        number=item.document.number,
                        type=item.document.kind,
                        issue_date=item.document.issue_date,
                        due_date=item.document.due_date,
                        amount=_money(item.document.amount, c),
                        amount_open=_money(item.document.amount_open, c),
                        days_past_due=item.days_past_due,
                        bucket=item.bucket,
                    )
                    for item in partner.items
                ],
                totals=_buckets(partner.receivable, c),
                payables=_buckets(partner.payable, c),
                unapplied_credits=s.UnappliedCredits(
                    _money(partner.unapplied_received, c), _money(partner.unapplied_paid, c)
                ),
            )
        )
    return s.ReceivablesReport(as_of=as_of, partners=partners)


RECEIVABLES_COLUMNS = [
    "as_of",
    "partner_id",
    "partner_name",
    "currency",
    "type",
    "number",
    "issue_date",
    "due_date",
    "amount",
    "amount_open",
    "days_past_due",
    "bucket",
]


def receivables_csv(as_of: date, ageing: list[PartnerAgeing]) -> str:
    """One row per open document, then one per unapplied credit (type unapplied_*)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(RECEIVABLES_COLUMNS)
    for p in ageing:
        c = p.currency
        for item in p.items:
            d = item.document
            writer.writerow(
                [
                    as_of,
                    p.partner_id,
                    p.partner_name,
                    c,
                    d.kind,
                    d.number,
                    d.issue_date,
                    d.due_date,
                    format_amount(d.amount, c),
                    format_amount(d.amount_open, c),
                    item.days_past_due,
                    item.bucket,
                ]
            )
        for direction, amount in (("received", p.unapplied_received), ("paid", p.unapplied_paid)):
            if amount:
                amount_text = format_amount(amount, c)
                writer.writerow(
                    [
                        as_of,
                        p.partner_id,
                        p.partner_name,
                        c,
                        f"unapplied_{direction}",
                        "",
                        "",
                        "",
                        amount_text,
                        amount_text,
                        "",
                        "",
                    ]
                )
    return out.getvalue()


def journal_view(run: StoredRun, status: str, entries: list[JournalEntry]) -> s.Journal:
    return s.Journal(
        run_id=run.run_id,
        period_start=run.header.period_start,
        period_end=run.header.period_end,
        status=status,
        entries=[
            s.JournalEntryOut(
                entry=entry.entry,
                kind=entry.kind,
                partner_id=entry.partner_id,
                currency=entry.currency,
                description=entry.description,
                lines=[
                    s.JournalLineOut(
                        account=leg.account,
                        account_name=leg.account_name,
                        partner_id=leg.partner_id,
                        debit=format_amount(leg.debit, entry.currency),
                        credit=format_amount(leg.credit, entry.currency),
                    )
                    for leg in entry.lines
                ],
            )
            for entry in entries
        ],
        totals=[
            s.JournalTotal(
                currency,
                format_amount(debit, currency),
                format_amount(credit, currency),
                debit == credit,
            )
            for currency, (debit, credit) in totals(entries).items()
        ],
    )


JOURNAL_COLUMNS = [
    "run_id",
    "entry",
    "kind",
    "currency",
    "account",
    "account_name",
    "partner_id",
    "debit",
    "credit",
    "description",
]


def journal_csv(run: StoredRun, entries: list[JournalEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(JOURNAL_COLUMNS)
    for entry in entries:
        for leg in entry.lines:
            writer.writerow(
                [
                    run.run_id,
                    entry.entry,
                    entry.kind,
                    entry.currency,
                    leg.account,
                    leg.account_name,
                    leg.partner_id or "",
                    format_amount(leg.debit, entry.currency),
                    format_amount(leg.credit, entry.currency),
                    entry.description,
                ]
            )
    return out.getvalue()
