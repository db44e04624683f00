"""Receivables ageing as of a date (contract §8): the open documents and the unapplied
credits, each as PostgreSQL knew them on that date. The bucketing is
`settlement.receivables.age`."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.receivables import OpenDocument

__all__ = ["read_open_items", "read_unapplied"]

_OPEN_SQL = """
SELECT d.document_id, d.number, d.kind, d.partner_id, d.partner_name, d.currency,
       d.issue_date, d.due_date, d.amount,
       d.amount - coalesce((
           SELECT sum(a.amount) FROM payment_allocations a
           JOIN payments p ON p.payment_id = a.payment_id
           WHERE a.document_id = d.document_id AND p.value_date <= :as_of), 0) AS amount_open
FROM settlement_documents d
WHERE d.issue_date <= :as_of"""

_UNAPPLIED_SQL = """
SELECT p.partner_id, p.direction, pa.name, pa.settlement_currency,
       sum(p.amount - coalesce((SELECT sum(a.amount) FROM payment_allocations a
                                WHERE a.payment_id = p.payment_id), 0)) AS unapplied
FROM payments p JOIN partners pa ON pa.partner_id = p.partner_id
WHERE p.value_date <= :as_of
GROUP BY p.partner_id, p.direction, pa.name, pa.settlement_currency"""


async def read_open_items(conn: AsyncConnection, as_of: date) -> list[OpenDocument]:
    rows = await conn.execute(text(_OPEN_SQL), {"as_of": as_of})
    return [
        OpenDocument(
            document_id=row.document_id,
            number=row.number,
            kind=row.kind,
            partner_id=row.partner_id,
            partner_name=row.partner_name,
            currency=row.currency,
            issue_date=row.issue_date,
            due_date=row.due_date,
            amount=row.amount,
            amount_open=Decimal(row.amount_open),
        )
        for row in rows
        if row.amount_open > 0
    ]


async def read_unapplied(
    conn: AsyncConnection, as_of: date
) -> tuple[dict[tuple[str, str], Decimal], dict[str, tuple[str, str]]]:
    unapplied: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    names: dict[str, tuple[str, str]] = {}
    for row in await conn.execute(text(_UNAPPLIED_SQL), {"as_of": as_of}):
        unapplied[(row.partner_id, row.direction)] += Decimal(row.unapplied)
        names[row.partner_id] = (row.name, row.settlement_currency)
    return dict(unapplied), names
