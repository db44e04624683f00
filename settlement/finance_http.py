"""Closing the month (contract §8): thin controllers over `FinanceService`.

POST /v1/settlements/{run_id}/approval     admin, finance    200 approved run (idempotent)
GET  /v1/settlements/{run_id}/documents    admin, finance    the run's invoices, credit notes
GET  /v1/documents/{document_id}           operator | signed partner (its own)   JSON
GET  /v1/documents/{document_id}.pdf       operator | signed partner (its own)   PDF
POST /v1/payments                          admin, finance    201 (Idempotency-Key, §2.2)
GET  /v1/reports/receivables?as_of=        admin, finance    JSON, or CSV to Accept: text/csv
GET  /v1/reports/receivables.csv?as_of=    admin, finance    CSV
GET  /v1/settlements/{run_id}/journal      admin, finance    JSON, or CSV to Accept: text/csv
GET  /v1/settlements/{run_id}/journal.csv  admin, finance    CSV
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from exchange.errors import PartnerNotFound, Unprocessable
from exchange.http import decode_body
from exchange.openapi import api
from exchange.operators import OperatorIdentity
from exchange.operators.auth import bearer_token, staff_caller
from exchange.wiring import Services
from partners.auth import operator_idempotency, partner_caller
from settlement import finance_schemas, finance_views, reports
from settlement.documents import render_pdf
from settlement.errors import (
    CurrencyMismatch,
    DocumentNotFound,
    Overpayment,
    RunUnreconciled,
    SettlementNotFound,
)
from settlement.finance import FinanceService
from settlement.finance_schemas import PaymentCreate
from settlement.http import with_status
from settlement.idempotency import OperatorIdempotency
from settlement.schemas import Run

__all__ = ["FinanceController"]

CSV = "text/csv; charset=utf-8"


def _wants_csv(request: Request[Any, Any, Any]) -> bool:
    return "text/csv" in request.headers.get("accept", "").lower()


def _csv(body: str, filename: str) -> Response[str]:
    return Response(
        content=body,
        media_type=CSV,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _as_of(text: str | None) -> date:
    if text is None:
        raise Unprocessable("as_of is required: a date YYYY-MM-DD.")
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise Unprocessable(f"as_of {text!r} is not a date YYYY-MM-DD.") from None


async def document_reader(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> str | None:
    """An operator (bearer token: admin or finance) sees every document: None. A signed
    partner sees its own: its partner_id."""
    if bearer_token(request) is not None:
        await staff_caller(request, services)
        return None
    return (await partner_caller(request, services)).partner_id


class FinanceController(Controller):
    path = "/v1"
    tags = ["finance"]

    @post(
        "/settlements/{run_id:str}/approval",
        status_code=200,
        dependencies={"staff": Provide(staff_caller)},
        summary="Approve a reconciled run: issue its invoices and credit notes",
        opt=api(responses={200: Run}, errors=(SettlementNotFound, RunUnreconciled)),
    )
    async def approve(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> Run:
        approved = await finance.approve(run_id, staff)
        return with_status(reports.run_view(approved.run), approved.approval)

    @get(
        "/settlements/{run_id:str}/documents",
        dependencies={"staff": Provide(staff_caller)},
        summary="The run's settlement documents",
        opt=api(responses={200: finance_schemas.DocumentPage}, errors=(SettlementNotFound,)),
    )
    async def run_documents(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> finance_schemas.DocumentPage:
        found = await finance.run_documents(run_id)
        return finance_schemas.DocumentPage(
            run_id=run_id, items=[finance_views.document_view(d) for d in found]
        )

    @get(
        "/documents/{document_ref:str}",
        dependencies={"reader": Provide(document_reader)},
        summary="A settlement document as JSON, or as PDF with the .pdf suffix",
        media_type="application/json",
        opt=api(
            responses={200: finance_schemas.DocumentOut},
            media_types=("application/pdf",),
            errors=(DocumentNotFound,),
        ),
    )
    async def document(
        self,
        request: Request[Any, Any, Any],
        reader: NamedDependency[str | None],
        finance: NamedDependency[FinanceService],
        document_ref: FromPath[str],
    ) -> Response[Any]:
        pdf = document_ref.endswith(".pdf")
        document_id = document_ref.removesuffix(".pdf")
        document = await finance.document(document_id, partner_id=reader)
        if not pdf:
            return Response(content=finance_views.document_view(document))
        return Response(
            content=render_pdf(document),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{document.number}.pdf"'},
        )

    @post(
        "/payments",
        status_code=201,
        dependencies={"staff": Provide(staff_caller)},
        summary="Record a payment received from or paid to a partner (Idempotency-Key)",
        opt=api(
            body=PaymentCreate,
            responses={201: finance_schemas.PaymentOut},
            errors=(PartnerNotFound, CurrencyMismatch, Overpayment),
            idempotent=True,
        ),
    )
    async def record_payment(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
    ) -> Response[bytes]:
        body = await request.body()
        idempotency = operator_idempotency(request, body)
        key, fingerprint = idempotency.key, idempotency.fingerprint
        data = decode_body(request, body, PaymentCreate)
        reply = await finance.record_payment(
            data, staff, OperatorIdempotency(staff.token_id, key, fingerprint)
        )
        return Response(
            content=reply.body,
            status_code=reply.status_code,
            media_type="application/json",
            headers={"Idempotency-Replayed": "true"} if reply.replayed else None,
        )

    async def _receivables(
        self, finance: FinanceService, request: Request[Any, Any, Any], csv: bool
    ) -> Response[Any]:
        as_of = _as_of(request.query_params.get("as_of"))
        ageing = await finance.receivables(as_of)
        if csv:
            body = finance_views.receivables_csv(as_of, ageing)
            return _csv(body, f"receivables-{as_of.isoformat()}.csv")
        return Response(content=finance_views.receivables_view(as_of, ageing))

    @get(
        "/reports/receivables",
        dependencies={"staff": Provide(staff_caller)},
        summary="Open documents aged at as_of, unapplied credits (CSV to Accept: text/csv)",
        media_type="application/json",
        opt=api(
            responses={200: finance_schemas.ReceivablesReport},
            media_types=("text/csv",),
            errors=(Unprocessable,),
        ),
    )
    async def receivables(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
    ) -> Response[Any]:
        return await self._receivables(finance, request, _wants_csv(request))

    @get(
        "/reports/receivables.csv",
        dependencies={"staff": Provide(staff_caller)},
        summary="The receivables ageing as CSV",
        media_type="text/csv",
        opt=api(errors=(Unprocessable,)),
    )
    async def receivables_csv(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
    ) -> Response[Any]:
        return await self._receivables(finance, request, csv=True)

    async def _journal(
        self, finance: FinanceService, request: Request[Any, Any, Any], run_id: str, csv: bool
    ) -> Response[Any]:
        run, approval, entries = await finance.journal(run_id)
        if csv:
            return _csv(finance_views.journal_csv(run, entries), f"{run_id}-journal.csv")
        status = "approved" if approval is not None else "computed"
        return Response(content=finance_views.journal_view(run, status, entries))

    @get(
        "/settlements/{run_id:str}/journal",
        dependencies={"staff": Provide(staff_caller)},
        summary="The run's double-entry journal (CSV to Accept: text/csv)",
        media_type="application/json",
        opt=api(
            responses={200: finance_schemas.Journal},
            media_types=("text/csv",),
            errors=(SettlementNotFound,),
        ),
    )
    async def journal(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> Response[Any]:
        return await self._journal(finance, request, run_id, _wants_csv(request))

    @get(
        "/settlements/{run_id:str}/journal.csv",
        dependencies={"staff": Provide(staff_caller)},
        summary="The run's double-entry journal as CSV",
        media_type="text/csv",
        opt=api(errors=(SettlementNotFound,)),
    )
    async def journal_csv(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> Response[Any]:
        return await self._journal(finance, request, run_id, csv=True)
