"""Payments in PostgreSQL (contract §8): the partner lock, its open documents, the payment
with its allocations, reading a payment back. The allocation rule is
`settlement.payments.allocate`.

The partner row is locked first (FOR NO KEY UPDATE, the lock posting transactions take
for credit-limited partners), so two payments for one partner never allocate the same
open amount twice. Allocations to invoices lower the partner's `receivable_open`, which
is what returns credit-limit headroom.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import PartnerNotFound
from partners.tables import partners
from settlement.errors import DocumentNotFound
from settlement.payments import Allocation, Direction, OpenItem, Payment, PaymentPartner
from settlement.tables import payment_allocations, payments, settlement_documents

__all__ = ["insert_payment", "load_payment", "lock_partner", "open_items"]


async def lock_partner(conn: AsyncConnection, partner_id: str) -> PaymentPartner:
    row = (
        await conn.execute(
            select(partners.c.partner_id, partners.c.settlement_currency)
            .where(partners.c.partner_id == partner_id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE
        )
    ).first()
    if row is None:
        raise PartnerNotFound(f"No partner {partner_id}.")
    return PaymentPartner(row.partner_id, row.settlement_currency)


async def open_items(
    conn: AsyncConnection, partner_id: str, *, document_id: str | None
) -> list[OpenItem]:
    """The partner's documents with an amount open (or the named one, open or not);
    a named document of another partner does not exist for this payment."""
    allocated = (
        select(func.coalesce(func.sum(payment_allocations.c.amount), 0))
        .where(payment_allocations.c.document_id == settlement_documents.c.document_id)
        .scalar_subquery()
    )
    open_amount = (settlement_documents.c.amount - allocated).label("amount_open")
    query = select(
        settlement_documents.c.document_id,
        settlement_documents.c.number,
        settlement_documents.c.kind,
        settlement_documents.c.issue_date,
        open_amount,
    ).where(settlement_documents.c.partner_id == partner_id)
    if document_id is not None:
        query = query.where(settlement_documents.c.document_id == document_id)
    rows = list(await conn.execute(query))
    if document_id is not None and not rows:
        raise DocumentNotFound(f"Partner {partner_id} has no document {document_id}.")
    return [
        OpenItem(row.document_id, row.number, row.kind, row.issue_date, Decimal(row.amount_open))
        for row in rows
        if row.amount_open > 0
    ]


async def insert_payment(
    conn: AsyncConnection,
    *,
    partner: PaymentPartner,
    direction: Direction,
    amount: Decimal,
    value_date: date,
    bank_reference: str,
    document_id: str | None,
    allocations: Sequence[Allocation],
    created_at: datetime,
    created_by: str,
) -> str:
    payment_id = f"pay_{secrets.token_hex(12)}"
    await conn.execute(
        payments.insert().values(
            payment_id=payment_id,
            partner_id=partner.partner_id,
            direction=direction,
            amount=amount,
            currency=partner.currency,
            value_date=value_date,
            bank_reference=bank_reference,
            document_id=document_id,
            created_at=created_at,
            created_by=created_by,
        )
    )
    if allocations:
        await conn.execute(
            payment_allocations.insert(),
            [
                {"payment_id": payment_id, "document_id": a.document_id, "amount": a.amount}
                for a in allocations
            ],
        )
    if direction == "received":
        settled = sum((a.amount for a in allocations), Decimal(0))
        await conn.execute(
            update(partners)
            .where(partners.c.partner_id == partner.partner_id)
            .values(receivable_open=partners.c.receivable_open - settled)
        )
    return payment_id


def _payment(row: Any, allocations: tuple[Allocation, ...]) -> Payment:
    return Payment(
        payment_id=row.payment_id,
        partner_id=row.partner_id,
        direction=row.direction,
        amount=row.amount,
        currency=row.currency,
        value_date=row.value_date,
        bank_reference=row.bank_reference,
        document_id=row.document_id,
        allocations=allocations,
        created_at=row.created_at,
        created_by=row.created_by,
    )


async def load_payment(conn: AsyncConnection, payment_id: str) -> Payment | None:
    row = (await conn.execute(select(payments).where(payments.c.payment_id == payment_id))).first()
    if row is None:
        return None
    allocations = tuple(
        Allocation(a.document_id, a.number, a.amount)
        for a in await conn.execute(
            select(
                payment_allocations.c.document_id,
                settlement_documents.c.number,
                payment_allocations.c.amount,
            )
            .join(
                settlement_documents,
                settlement_documents.c.document_id == payment_allocations.c.document_id,
            )
            .where(payment_allocations.c.payment_id == payment_id)
            .order_by(settlement_documents.c.issue_date, settlement_documents.c.number)
        )
    )
    return _payment(row, allocations)
