"""The console's month-end close (contract §8, §12): approve a run, its documents and their
PDFs, record a payment, the receivables ageing, adjustments with four eyes.

Each action calls the same service as the API (the `finance` and `adjustments`
dependencies), so refusals carry the API's status and message (an unreconciled run, the
requester approving their own adjustment). Finance and admin may do all of it (§8).

A form that records something (a payment, an adjustment request) carries an idempotency
key made when the form was rendered: submitting it twice, or reloading the POST, records
once and shows the first result (the same operator idempotency as the API's, §2.2).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template

from exchange import schemas
from exchange.console._web import posted_form, render
from exchange.console.sessions import ConsoleSession
from exchange.errors import RequestInProgress, Unprocessable
from exchange.money import format_amount
from exchange.service import AdjustmentService, Approver, Idempotency, adjustment_view
from exchange.wiring import Services
from partners import registry
from settlement.documents import render_pdf
from settlement.errors import DocumentNotFound
from settlement.finance import FinanceService
from settlement.finance_schemas import PaymentCreate, ReceivablesReport
from settlement.finance_views import receivables_view
from settlement.idempotency import OperatorIdempotency

__all__ = ["ConsoleFinance", "parse_as_of_date", "receivables_due"]

T = TypeVar("T")
_KEY = re.compile(r"[0-9a-f-]{36}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A double submit whose first POST is still in flight waits for it rather than failing.
IN_FLIGHT_WAITS = 20
IN_FLIGHT_WAIT_S = 0.1
AsOf = Annotated[str | None, QueryParameter(max_length=10)]
Shown = Annotated[str | None, QueryParameter(max_length=64)]


def parse_as_of_date(text: str | None, default: date) -> date:
    """`as_of` as the API reads it (YYYY-MM-DD), or today when the page is opened bare."""
    if not text:
        return default
    try:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise Unprocessable(f"as_of {text!r} is not a date YYYY-MM-DD.") from None


def receivables_due(report: ReceivablesReport) -> list[dict[str, Any]]:
    """Per partner with anything open: what it owes (open invoices), how much of that is
    past due, and what the operator owes it (open credit notes), from the receivables
    report the API serves."""
    due = []
    for partner in report.partners:
        owed, payable = partner.totals, partner.payables
        if Decimal(owed.total.amount) == 0 and Decimal(payable.total.amount) == 0:
            continue
        overdue = Decimal(owed.total.amount) - Decimal(owed.not_due.amount)
        due.append(
            {
                "partner": partner,
                "owed": owed.total,
                "overdue": format_amount(overdue, partner.currency),
                "payable": payable.total,
            }
        )
    return due


def _form_idempotency(path: str, form: dict[str, str]) -> tuple[str, bytes]:
    """The form's key (made when it was rendered) and a fingerprint of what it asks for:
    the same key with other values is refused (422), as an API retry would be."""
    key = form.get("idempotency_key", "")
    if not _KEY.fullmatch(key):
        raise Unprocessable("The form has no valid idempotency key; reload it and retry.")
    fields = sorted((k, v) for k, v in form.items() if k not in ("csrf_token", "idempotency_key"))
    digest = hashlib.sha256(f"POST {path}".encode())
    digest.update(msgspec.json.encode(fields))
    return key, digest.digest()


async def _once(call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`; if the same form's first submission is still in flight, wait for it
    and answer what it answered (its stored reply)."""
    for _ in range(IN_FLIGHT_WAITS):
        try:
            return await call()
        except RequestInProgress:
            await asyncio.sleep(IN_FLIGHT_WAIT_S)
    return await call()


def _decode(values: dict[str, Any], into: type[T]) -> T:
    try:
        return msgspec.json.decode(msgspec.json.encode(values), type=into)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None


def _payment(form: dict[str, str]) -> PaymentCreate:
    values: dict[str, Any] = {
        "partner_id": form.get("partner_id", "").strip(),
        "direction": form.get("direction", "").strip(),
        "amount": {
            "amount": form.get("amount", "").strip(),
            "currency": form.get("currency", "").strip().upper(),
        },
        "value_date": form.get("value_date", "").strip(),
        "bank_reference": form.get("bank_reference", "").strip(),
    }
    if form.get("document_id", "").strip():
        values["document_id"] = form["document_id"].strip()
    return _decode(values, PaymentCreate)


def _adjustment(form: dict[str, str]) -> schemas.AdjustmentCreate:
    points = form.get("points", "").strip()
    if not re.fullmatch(r"[+-]?\d{1,12}", points):
        raise Unprocessable("points must be a whole number: + credits the member, - debits.")
    values = {
        "member_id": form.get("member_id", "").strip(),
        "points": int(points),
        "issuer": form.get("issuer", "").strip(),
        "reason": form.get("reason", "").strip(),
    }
    return _decode(values, schemas.AdjustmentCreate)


def _approver(session: ConsoleSession) -> Approver:
    return Approver(token_id=session.identity.token_id, name=session.identity.name)


class ConsoleFinance(Controller):
    path = "/"

    @post("/runs/{run_id:str}/approval", status_code=303)
    async def approve_run(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> Response[Any]:
        await posted_form(request, session)
        await finance.approve(run_id, session.identity)
        return Redirect(f"/console/runs/{run_id}", status_code=303)

    @get("/documents/{document_ref:str}", media_type="application/pdf")
    async def document_pdf(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        finance: NamedDependency[FinanceService],
        document_ref: FromPath[str],
    ) -> Response[bytes]:
        """A document's PDF, for a browser that has a session rather than a bearer token."""
        if not document_ref.endswith(".pdf"):
            raise DocumentNotFound(f"No document {document_ref}.")
        document = await finance.document(document_ref.removesuffix(".pdf"), partner_id=None)
        return Response(
            content=render_pdf(document),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{document.number}.pdf"'},
        )

    @get("/receivables")
    async def receivables(
        self,
        request: Request[Any, Any, Any],
        *,
        session: NamedDependency[ConsoleSession],
        finance: NamedDependency[FinanceService],
        services: NamedDependency[Services],
        as_of: FromQuery[AsOf] = None,
        recorded: FromQuery[Shown] = None,
    ) -> Template:
        day = parse_as_of_date(as_of, services.clock.now().date())
        report = receivables_view(day, await finance.receivables(day))
        return render("receivables.html", session, request, report=report, recorded=recorded)

    @get("/payments")
    async def payment_form(
        self,
        request: Request[Any, Any, Any],
        *,
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
        document: FromQuery[Shown] = None,
        partner: FromQuery[Shown] = None,
        direction: FromQuery[Shown] = None,
    ) -> Template:
        """The form, prefilled from the receivables page's "Pay" link when it is followed."""
        partners = await registry.list_partners(services.engine)
        return render(
            "payments.html",
            session,
            request,
            partners=partners,
            document_id=document or "",
            partner_id=partner or "",
            direction=direction or "received",
            today=services.clock.now().date(),
            idempotency_key=str(uuid.uuid4()),
        )

    @post("/payments", status_code=303)
    async def record_payment(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        finance: NamedDependency[FinanceService],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        key, fingerprint = _form_idempotency("/console/payments", form)
        data = _payment(form)
        scope = OperatorIdempotency(session.identity.token_id, key, fingerprint)
        reply = await _once(lambda: finance.record_payment(data, session.identity, scope))
        payment_id = msgspec.json.decode(reply.body)["payment_id"]
        return Redirect(
            f"/console/receivables?as_of={data.value_date.isoformat()}&recorded={payment_id}",
            status_code=303,
        )

    @get("/adjustments")
    async def adjustments(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        adjustments: NamedDependency[AdjustmentService],
        posted: FromQuery[Shown] = None,
    ) -> Template:
        pending = [adjustment_view(row) for row in await adjustments.pending()]
        return render(
            "adjustments.html",
            session,
            request,
            pending=pending,
            posted=posted,
            idempotency_key=str(uuid.uuid4()),
        )

    @post("/adjustments", status_code=303)
    async def request_adjustment(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        adjustments: NamedDependency[AdjustmentService],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        key, fingerprint = _form_idempotency("/console/adjustments", form)
        data = _adjustment(form)
        outcome = await _once(
            lambda: adjustments.request(_approver(session), data, Idempotency(key, fingerprint))
        )
        if outcome.error is not None:
            raise outcome.error
        return Redirect("/console/adjustments", status_code=303)

    @post("/adjustments/{adjustment_id:str}/approval", status_code=303)
    async def approve_adjustment(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        adjustments: NamedDependency[AdjustmentService],
        adjustment_id: FromPath[str],
    ) -> Response[Any]:
        await posted_form(request, session)
        await adjustments.approve(_approver(session), adjustment_id)
        return Redirect(f"/console/adjustments?posted={adjustment_id}", status_code=303)
