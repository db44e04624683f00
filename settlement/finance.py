"""Closing the month (contract §8): the use cases, each owning its database transaction.

approve            the approval, its documents, their events and the audit line: one tx
record_payment     idempotency claim, partner lock, allocation, audit, stored reply: one tx
documents, receivables, journal    reads (one snapshot each)

Each use case reads and writes through `settlement.store` (and `settlement.documents`)
and leaves the arithmetic to the pure modules: `approval.check_approvable`,
`payments.allocate`, `receivables.age`, `journal.build_journal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.clock import Clock
from exchange.errors import Unprocessable
from exchange.money import parse_amount
from exchange.operators import OperatorIdentity
from settlement import approval, audit_log, documents, events, idempotency, journal, payments, store
from settlement import receivables as ageing
from settlement.errors import CurrencyMismatch, DocumentNotFound, SettlementNotFound
from settlement.finance_schemas import PaymentCreate
from settlement.finance_views import payment_view

__all__ = ["Approved", "FinanceService", "Reply"]


@dataclass(frozen=True, slots=True)
class Approved:
    run: store.StoredRun
    approval: approval.Approval


@dataclass(frozen=True, slots=True)
class Reply:
    status_code: int
    body: bytes
    replayed: bool


class FinanceService:
    def __init__(self, engine: AsyncEngine, clock: Clock, chart: journal.ChartOfAccounts) -> None:
        self.engine = engine
        self.clock = clock
        self.chart = chart

    async def _run(self, conn: AsyncConnection, run_id: str) -> store.StoredRun:
        run = await store.load_run(conn, run_id)
        if run is None:
            raise SettlementNotFound(f"No settlement run {run_id}.")
        return run

    # -- approval --------------------------------------------------------------------------

    async def approve(self, run_id: str, identity: OperatorIdentity) -> Approved:
        """Approve a reconciled run and issue its documents (idempotent; module docstring)."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            run = await self._run(conn, run_id)
            existing = await store.load_approval(conn, run_id)
            if existing is not None:
                return Approved(run, existing)
            approval.check_approvable(run.header)
            by = audit_log.actor_name(identity)
            if not await store.insert_approval(conn, run_id, by, now):
                found = await store.load_approval(conn, run_id)
                if found is None:  # pragma: no cover - the conflicting row is committed
                    raise SettlementNotFound(f"No settlement run {run_id}.")
                return Approved(run, found)
            issued = await self._issue_documents(conn, run, by)
            await audit_log.record(
                conn,
                identity,
                action="settlement.approve",
                subject=run_id,
                details={"documents": issued},
                at=now,
            )
        return Approved(run, approval.Approval(run_id, by, now))

    async def _issue_documents(
        self, conn: AsyncConnection, run: store.StoredRun, by: str
    ) -> list[str]:
        now = self.clock.now()
        lines = run.settlement.lines
        terms = await documents.partner_terms(conn, [line.partner_id for line in lines])
        numbers = []
        for draft in documents.draft_documents(lines, terms, now.date()):
            document_id, number = await documents.insert_document(
                conn,
                draft,
                run_id=run.run_id,
                period=(run.header.period_start, run.header.period_end),
                created_at=now,
                created_by=by,
            )
            await events.statement_ready(
                conn, draft.line.partner_id, run.run_id, document_id, number=number, at=now
            )
            numbers.append(number)
        return numbers

    async def approvals(self, run_ids: list[str]) -> dict[str, approval.Approval]:
        async with self.engine.connect() as conn:
            return await store.load_approvals(conn, run_ids)

    # -- documents -------------------------------------------------------------------------

    async def run_documents(self, run_id: str) -> list[documents.Document]:
        async with self.engine.connect() as conn:
            await self._run(conn, run_id)
            return await documents.load_documents(conn, run_id=run_id)

    async def document(self, document_id: str, *, partner_id: str | None) -> documents.Document:
        """A document; for a partner only its own (another's is not found, not forbidden)."""
        async with self.engine.connect() as conn:
            document = await documents.load_document(conn, document_id)
        if document is None or (partner_id is not None and document.partner_id != partner_id):
            raise DocumentNotFound(f"No document {document_id}.")
        return document

    # -- payments --------------------------------------------------------------------------

    async def record_payment(
        self,
        data: PaymentCreate,
        identity: OperatorIdentity,
        key: idempotency.OperatorIdempotency,
    ) -> Reply:
        money = parse_amount(data.amount.amount, data.amount.currency, what="amount.amount")
        if money.amount <= 0:
            raise Unprocessable("amount must be positive.")
        now = self.clock.now()
        async with self.engine.begin() as conn:
            earlier = await idempotency.claim(conn, key)
            if earlier is not None:
                return Reply(earlier.status_code, earlier.body, replayed=True)
            partner = await store.lock_partner(conn, data.partner_id)
            if money.currency != partner.currency:
                raise CurrencyMismatch(
                    f"Partner {partner.partner_id} settles in {partner.currency}, "
                    f"not {money.currency}."
                )
            items = await store.open_items(conn, partner.partner_id, document_id=data.document_id)
            allocations = payments.allocate(
                money.amount, items, direction=data.direction, document_id=data.document_id
            )
            payment_id = await store.insert_payment(
                conn,
                partner=partner,
                direction=data.direction,
                amount=money.amount,
                value_date=data.value_date,
                bank_reference=data.bank_reference,
                document_id=data.document_id,
                allocations=allocations,
                created_at=now,
                created_by=audit_log.actor_name(identity),
            )
            payment = await store.load_payment(conn, payment_id)
            if payment is None:  # pragma: no cover - inserted just above
                raise Unprocessable(payment_id)
            body = msgspec.json.encode(payment_view(payment))
            await audit_log.record(
                conn,
                identity,
                action="payment.record",
                subject=payment_id,
                details={
                    "request": msgspec.to_builtins(data),
                    "allocations": [
                        {"document_id": a.document_id, "amount": str(a.amount)} for a in allocations
                    ],
                },
                at=now,
            )
            await idempotency.remember(conn, key, idempotency.StoredReply(201, body), now)
        return Reply(201, body, replayed=False)

    # -- reports ---------------------------------------------------------------------------

    async def receivables(self, as_of: date) -> list[ageing.PartnerAgeing]:
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                items = await store.read_open_items(conn, as_of)
                unapplied, names = await store.read_unapplied(conn, as_of)
        return ageing.age(items, unapplied, names, as_of)

    async def journal(
        self, run_id: str
    ) -> tuple[store.StoredRun, approval.Approval | None, list[journal.JournalEntry]]:
        async with self.engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                run = await self._run(conn, run_id)
                approved = await store.load_approval(conn, run_id)
                figures = await store.read_journal_figures(conn, run.settlement.period)
        return run, approved, journal.build_journal(run.settlement.lines, figures, self.chart)
