"""Settlement documents (contract §8): invoices and credit notes issued on approval.

`_model` is pure (what a run line becomes, the number format), `_store` draws gap-free
numbers and reads and writes documents, `_pdf` renders one for filing.
"""

from settlement.documents._model import (
    SERIES,
    Document,
    DocumentDraft,
    DocumentKind,
    PartnerTerms,
    draft_documents,
    format_number,
)
from settlement.documents._pdf import render_pdf
from settlement.documents._store import (
    insert_document,
    load_document,
    load_documents,
    next_number,
    partner_terms,
)

__all__ = [
    "SERIES",
    "Document",
    "DocumentDraft",
    "DocumentKind",
    "PartnerTerms",
    "draft_documents",
    "format_number",
    "insert_document",
    "load_document",
    "load_documents",
    "next_number",
    "partner_terms",
    "render_pdf",
]
