"""A settlement document as a PDF an accounts-payable clerk can file (fpdf2, pure Python).

The PDF uses the PDF core font Helvetica, so no font file ships with the exchange and the
output is the same on every host. Core fonts cover Latin-1 only: a character outside it
(a partner name in Greek, say) is printed as "?" in the PDF, while the JSON document keeps
the exact text. Text is written as real text (not outlines), so it can be searched,
copied and read back by a machine (the tests do).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from exchange.money import format_amount
from settlement.documents._model import Document

__all__ = ["render_pdf"]

TITLES = {"invoice": "INVOICE", "credit_note": "CREDIT NOTE"}
ISSUER = "Coalition points exchange (operator)"


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _money(amount: Decimal, currency: str) -> str:
    plain = Decimal(format_amount(amount, currency))
    decimals = max(0, -int(plain.as_tuple().exponent))
    return f"{plain:,.{decimals}f} {currency}"


def _day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _row(pdf: FPDF, label: str, value: str, *, bold: bool = False) -> None:
    pdf.set_font("Helvetica", "B" if bold else "", 10)
    pdf.cell(110, 7, _latin1(label), border="B")
    pdf.cell(60, 7, _latin1(value), border="B", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _header(pdf: FPDF, document: Document) -> None:
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, TITLES[document.kind], new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 10)
    for label, value in (
        ("Number", document.number),
        ("Issue date", document.issue_date.isoformat()),
        ("Due date", document.due_date.isoformat()),
        ("Payment terms", f"{document.payment_terms_days} days"),
        ("Settlement run", document.run_id),
        ("Period", f"{_day(document.period_start)} to {_day(document.period_end)}"),
    ):
        pdf.cell(40, 6, label)
        pdf.cell(0, 6, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    payer, payee = (
        (document.partner_name, ISSUER)
        if document.kind == "invoice"
        else (ISSUER, document.partner_name)
    )
    pdf.cell(40, 6, "From")
    pdf.cell(0, 6, _latin1(ISSUER), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.cell(40, 6, "To")
    pdf.cell(
        0,
        6,
        _latin1(f"{document.partner_name} (partner {document.partner_id})"),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.cell(40, 6, "Payable by")
    pdf.cell(0, 6, _latin1(f"{payer}, to {payee}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)


def render_pdf(document: Document) -> bytes:
    """The document as PDF bytes: the same document always gives the same bytes (the PDF's
    creation date is the document's, not the clock's)."""
    pdf = FPDF(format="A4")
    pdf.set_creation_date(document.created_at)
    pdf.set_title(_latin1(f"{TITLES[document.kind].title()} {document.number}"))
    pdf.set_author(ISSUER)
    pdf.add_page()
    _header(pdf, document)
    currency = document.currency
    _row(pdf, "Description", "Amount", bold=True)
    _row(
        pdf,
        f"Issuance charge: {document.issued_points:,} points issued",
        _money(document.issuance_charge, currency),
    )
    _row(
        pdf,
        f"Redemption credit: {document.redeemed_points:,} points redeemed",
        _money(-document.redemption_credit, currency),
    )
    _row(pdf, "Net (issuance charge - redemption credit)", _money(document.net, currency))
    total_label = "Total due to the operator" if document.kind == "invoice" else "Total due to you"
    _row(pdf, total_label, _money(document.amount, currency), bold=True)
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 9)
    note = document.tax_note or "No tax note on file for this partner."
    pdf.multi_cell(0, 5, _latin1(f"Tax note: {note}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.multi_cell(
        0,
        5,
        "The exchange computes no VAT; amounts are net settlement amounts under the "
        "coalition agreement. Please quote the document number with your payment.",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    return bytes(pdf.output())
