"""Documents in PostgreSQL: drawing gap-free numbers, inserting, reading.

Numbers: one `document_counters` row per (series, year), incremented with an upsert
whose row lock is held until the approval's database transaction ends. A concurrent
approval waits on that lock and draws the next number after this one commits; if this
one rolls back, its increment rolls back with it and the number is drawn again. That is
what makes the series gap-free, which a SEQUENCE (nextval is never rolled back) is not.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from partners.tables import partners
from settlement.documents._model import (
    Document,
    DocumentDraft,
    PartnerTerms,
    format_number,
)
from settlement.tables import payment_allocations, settlement_documents

__all__ = [
    "insert_document",
    "load_document",
    "load_documents",
    "next_number",
    "partner_terms",
]

_NEXT_NUMBER_SQL = """
INSERT INTO document_counters AS c (series, year, last_value) VALUES (:series, :year, 1)
ON CONFLICT (series, year) DO UPDATE SET last_value = c.last_value + 1
RETURNING last_value"""


async def next_number(conn: AsyncConnection, series: str, year: int) -> int:
    """The next number of the series in `year`; the counter row stays locked until the
    caller's database transaction ends (see the module docstring)."""
    value: int = (
        await conn.execute(text(_NEXT_NUMBER_SQL), {"series": series, "year": year})
    ).scalar_one()
    return value


async def partner_terms(
    conn: AsyncConnection, partner_ids: Sequence[str]
) -> dict[str, PartnerTerms]:
    rows = await conn.execute(
        select(partners.c.partner_id, partners.c.payment_terms_days, partners.c.tax_note).where(
            partners.c.partner_id.in_(list(partner_ids))
        )
    )
    return {row.partner_id: PartnerTerms(row.payment_terms_days, row.tax_note) for row in rows}


async def insert_document(
    conn: AsyncConnection,
    draft: DocumentDraft,
    *,
    run_id: str,
    period: tuple[datetime, datetime],
    created_at: datetime,
    created_by: str,
) -> tuple[str, str]:
    """Draw the draft's number and store it; returns the new document_id and number."""
    year = draft.issue_date.year
    sequence = await next_number(conn, draft.series, year)
    document_id = f"doc_{secrets.token_hex(12)}"
    line = draft.line
    number = format_number(draft.series, year, sequence)
    await conn.execute(
        settlement_documents.insert().values(
            document_id=document_id,
            number=number,
            series=draft.series,
            year=year,
            sequence=sequence,
            kind=draft.kind,
            run_id=run_id,
            partner_id=line.partner_id,
            partner_name=line.partner_name,
            currency=line.currency,
            period_start=period[0],
            period_end=period[1],
            issued_points=line.issued_points,
            redeemed_points=line.redeemed_points,
            issuance_charge=line.issuance_charge,
            redemption_credit=line.redemption_credit,
            net=line.net,
            amount=abs(line.net),
            issue_date=draft.issue_date,
            due_date=draft.due_date,
            payment_terms_days=draft.terms.payment_terms_days,
            tax_note=draft.terms.tax_note,
            created_at=created_at,
            created_by=created_by,
        )
    )
    return document_id, number


_ALLOCATED = (
    select(
        payment_allocations.c.document_id,
        func.sum(payment_allocations.c.amount).label("allocated"),
    )
    .group_by(payment_allocations.c.document_id)
    .subquery()
)


def _document(row: Any) -> Document:
    allocated = Decimal(row.allocated) if row.allocated is not None else Decimal(0)
    return Document(
        document_id=row.document_id,
        number=row.number,
        kind=row.kind,
        run_id=row.run_id,
        partner_id=row.partner_id,
        partner_name=row.partner_name,
        currency=row.currency,
        period_start=row.period_start,
        period_end=row.period_end,
        issued_points=row.issued_points,
        redeemed_points=row.redeemed_points,
        issuance_charge=row.issuance_charge,
        redemption_credit=row.redemption_credit,
        net=row.net,
        amount=row.amount,
        issue_date=row.issue_date,
        due_date=row.due_date,
        payment_terms_days=row.payment_terms_days,
        tax_note=row.tax_note,
        created_at=row.created_at,
        created_by=row.created_by,
        amount_open=row.amount - allocated,
    )


def _documents_query() -> Any:
    return select(settlement_documents, _ALLOCATED.c.allocated).outerjoin(
        _ALLOCATED, _ALLOCATED.c.document_id == settlement_documents.c.document_id
    )


async def load_document(conn: AsyncConnection, document_id: str) -> Document | None:
    row = (
        await conn.execute(
            _documents_query().where(settlement_documents.c.document_id == document_id)
        )
    ).first()
    return _document(row) if row is not None else None


async def load_documents(
    conn: AsyncConnection, *, run_id: str | None = None, partner_id: str | None = None
) -> list[Document]:
    """Documents by issue order (series, then number)."""
    query = _documents_query()
    if run_id is not None:
        query = query.where(settlement_documents.c.run_id == run_id)
    if partner_id is not None:
        query = query.where(settlement_documents.c.partner_id == partner_id)
    query = query.order_by(settlement_documents.c.series, settlement_documents.c.number)
    return [_document(row) for row in await conn.execute(query)]
