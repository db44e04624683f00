"""Closing the month through the real API (contract §8): approval, documents and their
PDFs, payments, receivables ageing, credit limits, the journal. Real PostgreSQL, signed
partner requests, operator tokens; dates come from the frozen test clock or are passed
as `as_of`, never read from the database's clock.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.operators import create_operator_token
from partners.errors import PartnerAPIError
from tests.http.conftest import PartnerFactory
from tests.http.test_settlement_api import PERIOD_END, RUN_ID, worked_example

PAYMENTS = "/v1/payments"
# The worked example's run is computed on 2026-11-24 (clock 06:00 UTC) and approved then.
ISSUE_DATE = "2026-11-24"
DUE_DATE = "2026-12-08"  # + the default 14 payment terms days


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql)))


async def _compute(client: httpx.AsyncClient, admin: dict[str, str], period_end: str) -> str:
    created = await client.post(
        "/v1/admin/settlements", json={"period_end": period_end}, headers=admin
    )
    assert created.status_code in (200, 201), created.text
    run_id: str = created.json()["run_id"]
    return run_id


async def approve_run(client: httpx.AsyncClient, headers: dict[str, str], run_id: str) -> Any:
    response = await client.post(f"/v1/settlements/{run_id}/approval", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def fetch_documents(
    client: httpx.AsyncClient, headers: dict[str, str], run_id: str
) -> dict[str, Any]:
    response = await client.get(f"/v1/settlements/{run_id}/documents", headers=headers)
    assert response.status_code == 200, response.text
    return {document["partner_id"]: document for document in response.json()["items"]}


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return headers | {"Idempotency-Key": key}


def payment_body(partner_id: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "partner_id": partner_id,
        "direction": "received",
        "amount": {"amount": amount, "currency": "EUR"},
        "value_date": "2026-12-01",
        "bank_reference": f"BANK-{partner_id}-{amount}",
    } | extra


def pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)


# -- approval ----------------------------------------------------------------------------------


async def test_approval_issues_one_numbered_document_per_nonzero_line(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer, _, _cinema = await worked_example(onboard, clock)
    idle = await onboard("idle")  # a line of zeros: no document
    await _compute(client, admin_headers, PERIOD_END)
    computed = await client.get(f"/v1/settlements/{RUN_ID}", headers=finance_headers)
    assert (computed.json()["status"], computed.json()["approved_by"]) == ("computed", None)
    assert (await grocer.client.statement(RUN_ID))["status"] == "computed"

    approved = await approve_run(client, finance_headers, RUN_ID)

    assert approved["status"] == "approved"
    assert approved["approved_by"] == "finance:test-finance"
    assert approved["approved_at"] == "2026-11-24T06:00:00Z"
    clock.advance(timedelta(hours=2))
    again = await approve_run(client, admin_headers, RUN_ID)  # twice: same result
    assert again == approved
    fetched = await client.get(f"/v1/settlements/{RUN_ID}", headers=finance_headers)
    assert fetched.json() == approved
    listed = await client.get("/v1/settlements", headers=finance_headers)
    assert listed.json()["items"][0]["status"] == "approved"
    statement = await grocer.client.statement(RUN_ID)
    assert (statement["status"], statement["approved_at"]) == ("approved", "2026-11-24T06:00:00Z")

    documents = await fetch_documents(client, finance_headers, RUN_ID)
    assert sorted(documents) == ["cinema", "fuel", "grocer"]  # not the idle partner
    assert idle.partner_id not in documents
    numbers = {partner: document["number"] for partner, document in documents.items()}
    # Numbers are drawn series by series, partner by partner: CN first, then INV.
    assert numbers == {
        "cinema": "CN-2026-000001",
        "fuel": "INV-2026-000001",
        "grocer": "INV-2026-000002",
    }
    invoice = documents["grocer"]
    assert invoice["type"] == "invoice"
    assert invoice["lines"] == [
        {
            "code": "issuance_charge",
            "description": "Issuance charge (points issued x issue price)",
            "points": 1_000_000,
            "amount": {"amount": "12000.00", "currency": "EUR"},
        },
        {
            "code": "redemption_credit",
            "description": "Redemption credit (points redeemed x redemption value)",
            "points": 300_000,
            "amount": {"amount": "-3000.00", "currency": "EUR"},
        },
        {
            "code": "net",
            "description": "Net: issuance charge - redemption credit",
            "points": None,
            "amount": {"amount": "9000.00", "currency": "EUR"},
        },
    ]
    assert invoice["total"] == {"amount": "9000.00", "currency": "EUR"}
    assert (invoice["issue_date"], invoice["due_date"]) == (ISSUE_DATE, DUE_DATE)
    assert (invoice["period_start"], invoice["period_end"]) == ("1970-01-01T00:00:00Z", PERIOD_END)
    assert (invoice["status"], invoice["amount_open"]["amount"]) == ("open", "9000.00")
    credit_note = documents["cinema"]
    assert credit_note["type"] == "credit_note"
    assert credit_note["total"] == {"amount": "5000.00", "currency": "EUR"}

    # statement.ready is in the outbox, one per document, written with the approval.
    events = await _rows(engine, "SELECT partner_id, type, data FROM webhook_outbox")
    assert sorted((e.partner_id, e.type, e.data["document_id"]) for e in events) == sorted(
        (partner, "statement.ready", d["document_id"]) for partner, d in documents.items()
    )
    audit = await _rows(engine, "SELECT actor, action, subject, details FROM audit_log")
    assert [(a.actor, a.action, a.subject) for a in audit] == [
        ("finance:test-finance", "settlement.approve", RUN_ID)
    ]
    assert sorted(audit[0].details["documents"]) == sorted(numbers.values())


async def test_an_unreconciled_run_cannot_be_approved(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    await onboard("grocer")
    # A run whose conservation check failed, as the engine stores one (flagged, kept).
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO settlement_runs VALUES ('stl_20261120T000000Z', '1970-01-01', "
                "'2026-11-20', "
                "'2026-11-20', 'test', false, 0, 0, 0, 0, 0, 0, 5, false, true, true, true)"
            )
        )

    bad = "stl_20261120T000000Z"  # a well-formed id: run ids are strict
    refused = await client.post(f"/v1/settlements/{bad}/approval", headers=finance_headers)

    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "run_unreconciled"
    assert await _rows(engine, "SELECT * FROM settlement_approvals") == []
    run = await client.get(f"/v1/settlements/{bad}", headers=finance_headers)
    assert run.json()["status"] == "computed"
    missing = await client.post("/v1/settlements/stl_nope/approval", headers=admin_headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "settlement_not_found")


async def test_approval_and_finance_reads_need_an_operator_token(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> None:
    grocer, _, _ = await worked_example(onboard, clock)
    await _compute(client, admin_headers, PERIOD_END)
    for method, path in (
        ("POST", f"/v1/settlements/{RUN_ID}/approval"),
        ("GET", f"/v1/settlements/{RUN_ID}/documents"),
        ("GET", f"/v1/settlements/{RUN_ID}/journal"),
        ("GET", "/v1/reports/receivables?as_of=2026-12-01"),
    ):
        assert (await client.request(method, path)).status_code == 401, path
        with pytest.raises(PartnerAPIError) as signed:
            await grocer.client.request(method, path)
        assert signed.value.status == 401, path
    unpaid = await client.post(
        PAYMENTS, json=payment_body("grocer", "1.00"), headers={"Idempotency-Key": "k"}
    )
    assert unpaid.status_code == 401


# -- documents -------------------------------------------------------------------------------


async def test_documents_json_and_pdf_for_operators_and_their_own_partner(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer, fuel, _ = await worked_example(onboard, clock)
    patched = await client.patch(
        "/v1/admin/partners/grocer",
        json={"payment_terms_days": 30, "tax_note": "Reverse charge: VAT due by the recipient."},
        headers=admin_headers,
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["payment_terms_days"], patched.json()["tax_note"]) == (
        30,
        "Reverse charge: VAT due by the recipient.",
    )
    await _compute(client, admin_headers, PERIOD_END)
    await approve_run(client, finance_headers, RUN_ID)
    invoice = (await fetch_documents(client, finance_headers, RUN_ID))["grocer"]
    assert (invoice["due_date"], invoice["payment_terms_days"]) == ("2026-12-24", 30)
    assert invoice["tax_note"] == "Reverse charge: VAT due by the recipient."
    document_id = invoice["document_id"]

    as_finance = await client.get(f"/v1/documents/{document_id}", headers=finance_headers)
    assert as_finance.json() == invoice
    as_grocer = await grocer.client.request("GET", f"/v1/documents/{document_id}")
    assert as_grocer.json() == invoice
    with pytest.raises(PartnerAPIError) as other:
        await fuel.client.request("GET", f"/v1/documents/{document_id}")
    assert (other.value.status, other.value.code) == (404, "document_not_found")
    with pytest.raises(PartnerAPIError) as other_pdf:
        await fuel.client.request("GET", f"/v1/documents/{document_id}.pdf")
    assert other_pdf.value.status == 404
    unknown = await client.get("/v1/documents/doc_nope.pdf", headers=finance_headers)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "document_not_found")
    assert (await client.get(f"/v1/documents/{document_id}")).status_code == 401

    pdf = await grocer.client.request("GET", f"/v1/documents/{document_id}.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    printed = pdf_text(pdf.content)
    for expected in (
        "INVOICE",
        "INV-2026-000002",
        "Grocer",
        "partner grocer",
        "12,000.00 EUR",
        "-3,000.00 EUR",
        "9,000.00 EUR",
        "2026-12-24",
        "30 days",
        "Reverse charge: VAT due by the recipient.",
    ):
        assert expected in printed, expected
    operator_pdf = await client.get(f"/v1/documents/{document_id}.pdf", headers=admin_headers)
    assert operator_pdf.content == pdf.content  # rendered from the immutable document


async def test_payment_terms_are_validated_on_onboarding(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {
        "partner_id": "grocer",
        "name": "Grocer",
        "settlement_currency": "EUR",
        "issue_price": "0.012",
        "redemption_value": "0.010",
    }
    for bad in ({"payment_terms_days": -1}, {"payment_terms_days": 366}, {"tax_note": ""}):
        response = await client.post("/v1/admin/partners", json=body | bad, headers=admin_headers)
        assert response.status_code == 422, bad
    created = await client.post(
        "/v1/admin/partners", json=body | {"payment_terms_days": 0}, headers=admin_headers
    )
    assert created.json()["payment_terms_days"] == 0


# -- payments --------------------------------------------------------------------------------


async def _approved_example(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin: dict[str, str],
    finance: dict[str, str],
) -> dict[str, Any]:
    await worked_example(onboard, clock)
    await _compute(client, admin, PERIOD_END)
    await approve_run(client, finance, RUN_ID)
    return await fetch_documents(client, finance, RUN_ID)


async def test_payments_follow_the_idempotency_rules(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    documents = await _approved_example(onboard, client, clock, admin_headers, finance_headers)
    body = payment_body("grocer", "4000.00", document_id=documents["grocer"]["document_id"])

    missing = await client.post(PAYMENTS, json=body, headers=finance_headers)
    assert (missing.status_code, missing.json()["code"]) == (400, "idempotency_key_missing")
    first = await client.post(PAYMENTS, json=body, headers=keyed(finance_headers, "pay-1"))
    assert first.status_code == 201, first.text
    assert "idempotency-replayed" not in first.headers
    replay = await client.post(PAYMENTS, json=body, headers=keyed(finance_headers, "pay-1"))
    assert (replay.status_code, replay.headers["idempotency-replayed"]) == (201, "true")
    assert replay.content == first.content
    other = body | {"bank_reference": "another"}
    reused = await client.post(PAYMENTS, json=other, headers=keyed(finance_headers, "pay-1"))
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert len(await _rows(engine, "SELECT * FROM payments")) == 1
    # A key is the token's own: the admin's "pay-1" is another key.
    admin = await client.post(PAYMENTS, json=other, headers=keyed(admin_headers, "pay-1"))
    assert admin.status_code == 201
    # A request that failed validation does not consume its key.
    bad = body | {"amount": {"amount": "1.001", "currency": "EUR"}}
    refused = await client.post(PAYMENTS, json=bad, headers=keyed(finance_headers, "pay-2"))
    assert refused.status_code == 422
    fixed = body | {"amount": {"amount": "1.00", "currency": "EUR"}}
    accepted = await client.post(PAYMENTS, json=fixed, headers=keyed(finance_headers, "pay-2"))
    assert accepted.status_code == 201


async def test_a_payment_in_flight_is_request_in_progress(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
) -> None:
    await onboard("grocer")
    token_id, token = await create_operator_token(engine, "finance", "busy")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "pay-1"}
    async with engine.begin() as conn:  # the first request, still running, holds its key
        await conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended('operator' || chr(31) || :scope, 0))"
            ),
            {"scope": f"{token_id}\x1fpay-1"},
        )
        busy = await client.post(PAYMENTS, json=payment_body("grocer", "1.00"), headers=headers)
    assert (busy.status_code, busy.json()["code"]) == (409, "request_in_progress")
    done = await client.post(PAYMENTS, json=payment_body("grocer", "1.00"), headers=headers)
    assert done.status_code == 201


async def test_payments_settle_documents_oldest_first_and_refuse_what_does_not_fit(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer, _, _ = await worked_example(onboard, clock)
    await _compute(client, admin_headers, PERIOD_END)
    await approve_run(client, finance_headers, RUN_ID)
    documents = await fetch_documents(client, finance_headers, RUN_ID)
    grocer_invoice = documents["grocer"]["document_id"]
    # A second, later invoice for grocer: 1,000 points in the next day's run (12.00 EUR).
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 1000, reference="next-day")
    clock.set(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    next_run = await _compute(client, admin_headers, "2026-11-25T00:00:00Z")
    await approve_run(client, finance_headers, next_run)
    later_invoice = (await fetch_documents(client, finance_headers, next_run))["grocer"]
    assert (later_invoice["number"], later_invoice["issue_date"]) == (
        "INV-2026-000003",
        "2026-11-25",
    )
    headers = finance_headers

    wrong_currency = payment_body("grocer", "10.00") | {
        "amount": {"amount": "10.00", "currency": "USD"}
    }
    response = await client.post(PAYMENTS, json=wrong_currency, headers=keyed(headers, "p-usd"))
    assert (response.status_code, response.json()["code"]) == (422, "currency_mismatch")
    too_much = payment_body("grocer", "9000.01", document_id=grocer_invoice)
    response = await client.post(PAYMENTS, json=too_much, headers=keyed(headers, "p-over"))
    assert (response.status_code, response.json()["code"]) == (422, "overpayment")
    wrong_kind = payment_body("cinema", "1.00", document_id=documents["cinema"]["document_id"])
    response = await client.post(PAYMENTS, json=wrong_kind, headers=keyed(headers, "p-kind"))
    assert response.status_code == 422
    foreign = payment_body("fuel", "1.00", document_id=grocer_invoice)
    response = await client.post(PAYMENTS, json=foreign, headers=keyed(headers, "p-foreign"))
    assert (response.status_code, response.json()["code"]) == (404, "document_not_found")
    for bad in (
        payment_body("grocer", "0.00"),
        payment_body("grocer", "1.00", direction="sideways"),
        payment_body("grocer", "1.00", value_date="01/12/2026"),
        payment_body("grocer", "1.00", bank_reference=""),
        payment_body("grocer", "1.00", extra="field"),
    ):
        response = await client.post(PAYMENTS, json=bad, headers=keyed(headers, "p-bad"))
        assert response.status_code == 422, bad
    unknown = await client.post(
        PAYMENTS, json=payment_body("nobody", "1.00"), headers=keyed(headers, "p-nobody")
    )
    assert unknown.status_code == 404
    assert await _rows(engine, "SELECT * FROM payments") == []

    # Without a document: oldest open invoice first, then the next; the rest unapplied.
    paid = await client.post(
        PAYMENTS, json=payment_body("grocer", "9500.00"), headers=keyed(headers, "p-1")
    )
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    assert payment["allocations"] == [
        {
            "document_id": grocer_invoice,
            "number": "INV-2026-000002",
            "amount": {"amount": "9000.00", "currency": "EUR"},
        },
        {
            "document_id": later_invoice["document_id"],
            "number": "INV-2026-000003",
            "amount": {"amount": "12.00", "currency": "EUR"},
        },
    ]
    assert payment["unapplied"] == {"amount": "488.00", "currency": "EUR"}
    assert payment["created_by"] == "finance:test-finance"
    invoice = await client.get(f"/v1/documents/{grocer_invoice}", headers=headers)
    assert (invoice.json()["status"], invoice.json()["amount_open"]["amount"]) == ("paid", "0.00")
    # Paid in full: nothing more fits on it.
    again = payment_body("grocer", "0.01", document_id=grocer_invoice)
    response = await client.post(PAYMENTS, json=again, headers=keyed(headers, "p-again"))
    assert (response.status_code, response.json()["code"]) == (422, "overpayment")
    # The operator pays the cinema's credit note.
    paid_out = payment_body("cinema", "5000.00", direction="paid")
    response = await client.post(PAYMENTS, json=paid_out, headers=keyed(headers, "p-cinema"))
    assert response.json()["allocations"][0]["number"] == "CN-2026-000001"
    allocations = await _rows(engine, "SELECT document_id, amount FROM payment_allocations")
    assert sorted((a.document_id, a.amount) for a in allocations) == sorted(
        [
            (grocer_invoice, Decimal("9000")),
            (later_invoice["document_id"], Decimal("12")),
            (documents["cinema"]["document_id"], Decimal("5000")),
        ]
    )
    audit = await _rows(engine, "SELECT action FROM audit_log WHERE action = 'payment.record'")
    assert len(audit) == 2


# -- receivables -----------------------------------------------------------------------------


def _buckets(**amounts: str) -> dict[str, dict[str, str]]:
    names = ("not_due", "1_30", "31_60", "61_90", "over_90", "total")
    return {name: {"amount": amounts.get(name, "0.00"), "currency": "EUR"} for name in names}


async def fetch_receivables(
    client: httpx.AsyncClient, headers: dict[str, str], as_of: str
) -> dict[str, Any]:
    response = await client.get(f"/v1/reports/receivables?as_of={as_of}", headers=headers)
    assert response.status_code == 200, response.text
    return {partner["partner_id"]: partner for partner in response.json()["partners"]}


async def test_receivables_are_aged_as_of_any_date(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    documents = await _approved_example(onboard, client, clock, admin_headers, finance_headers)
    partial = payment_body("grocer", "4000.00", value_date="2026-12-01")
    assert (
        await client.post(PAYMENTS, json=partial, headers=keyed(finance_headers, "r-1"))
    ).status_code == 201
    fuel = payment_body("fuel", "3000.00", value_date="2026-12-10")
    assert (
        await client.post(PAYMENTS, json=fuel, headers=keyed(finance_headers, "r-2"))
    ).status_code == 201

    before_issue = await fetch_receivables(client, finance_headers, "2026-11-23")
    assert before_issue == {}
    # Before the grocer's payment's value date: the whole invoice, not yet due.
    early = await fetch_receivables(client, finance_headers, "2026-11-30")
    assert early["grocer"]["totals"] == _buckets(not_due="9000.00", total="9000.00")
    assert early["grocer"]["documents"][0]["days_past_due"] == -8
    # 12 days past the due date (2026-12-08): 1-30; fuel's overpayment is an unapplied credit.
    later = await fetch_receivables(client, finance_headers, "2026-12-20")
    grocer = later["grocer"]
    assert grocer["documents"] == [
        {
            "document_id": documents["grocer"]["document_id"],
            "number": "INV-2026-000002",
            "type": "invoice",
            "issue_date": ISSUE_DATE,
            "due_date": DUE_DATE,
            "amount": {"amount": "9000.00", "currency": "EUR"},
            "amount_open": {"amount": "5000.00", "currency": "EUR"},
            "days_past_due": 12,
            "bucket": "1_30",
        }
    ]
    assert grocer["totals"] == _buckets(**{"1_30": "5000.00", "total": "5000.00"})
    assert later["fuel"]["documents"] == []
    assert later["fuel"]["unapplied_credits"] == {
        "received": {"amount": "200.00", "currency": "EUR"},
        "paid": {"amount": "0.00", "currency": "EUR"},
    }
    assert later["cinema"]["payables"] == _buckets(**{"1_30": "5000.00", "total": "5000.00"})
    assert later["cinema"]["totals"] == _buckets()
    # 92 days past due: over 90.
    much_later = await fetch_receivables(client, finance_headers, "2027-03-10")
    assert much_later["grocer"]["documents"][0]["days_past_due"] == 92
    assert much_later["grocer"]["totals"]["over_90"]["amount"] == "5000.00"

    as_csv = await client.get(
        "/v1/reports/receivables?as_of=2026-12-20",
        headers=finance_headers | {"Accept": "text/csv"},
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["partner_id"], r["type"], r["amount_open"], r["bucket"]) for r in rows] == [
        ("cinema", "credit_note", "5000.00", "1_30"),
        ("fuel", "unapplied_received", "200.00", ""),
        ("grocer", "invoice", "5000.00", "1_30"),
    ]
    same = await client.get("/v1/reports/receivables.csv?as_of=2026-12-20", headers=finance_headers)
    assert same.text == as_csv.text
    for bad in ("", "?as_of=20261220", "?as_of=2026-13-01", "?as_of=tomorrow"):
        response = await client.get(f"/v1/reports/receivables{bad}", headers=finance_headers)
        assert response.status_code == 422, bad


# -- credit limits ---------------------------------------------------------------------------


async def test_credit_headroom_returns_when_the_partner_pays_not_when_a_run_is_computed(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    airline = await onboard(
        "airline", issue_price="0.01", credit_limit={"amount": "10.00", "currency": "EUR"}
    )
    member = (await airline.client.enrol_member())["member_id"]
    await airline.client.earn(member, 1000, reference="o-1")  # 10.00: the whole limit

    async def refused(reference: str, points: int = 1) -> None:
        with pytest.raises(PartnerAPIError) as caught:
            await airline.client.earn(member, points, reference=reference)
        assert (caught.value.status, caught.value.code) == (422, "credit_limit_exceeded")

    await refused("before-run")
    clock.set(datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    await _compute(client, admin_headers, PERIOD_END)
    await refused("computed")
    await approve_run(client, finance_headers, RUN_ID)
    await refused("approved")
    partial = payment_body("airline", "4.00")
    assert (
        await client.post(PAYMENTS, json=partial, headers=keyed(finance_headers, "c-1"))
    ).status_code == 201
    await refused("partly-paid", points=401)  # 6.00 unpaid + 4.01 > 10.00
    await airline.client.earn(member, 400, reference="within")  # 6.00 + 4.00 = 10.00
    await refused("full-again")
    rest = payment_body("airline", "6.00")
    assert (
        await client.post(PAYMENTS, json=rest, headers=keyed(finance_headers, "c-2"))
    ).status_code == 201
    await airline.client.earn(member, 600, reference="paid")  # 4.00 + 6.00 = 10.00


# -- journal ---------------------------------------------------------------------------------


def journal_balances(journal: dict[str, Any]) -> dict[tuple[str, str | None], Decimal]:
    """Debit-positive balance per (account, partner) over the whole journal."""
    balances: dict[tuple[str, str | None], Decimal] = {}
    for entry in journal["entries"]:
        for line in entry["lines"]:
            key = (line["account"], line["partner_id"])
            balances[key] = (
                balances.get(key, Decimal(0)) + Decimal(line["debit"]) - Decimal(line["credit"])
            )
    return {key: value for key, value in balances.items() if value}


async def test_the_worked_example_journal_balances_in_the_chart_of_accounts(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    await _approved_example(onboard, client, clock, admin_headers, finance_headers)

    response = await client.get(f"/v1/settlements/{RUN_ID}/journal", headers=finance_headers)

    assert response.status_code == 200, response.text
    journal = response.json()
    assert journal["status"] == "approved"
    assert journal["totals"] == [
        {"currency": "EUR", "debit": "33800.00", "credit": "33800.00", "balanced": True}
    ]
    for entry in journal["entries"]:  # every entry balances on its own
        debit = sum(Decimal(line["debit"]) for line in entry["lines"])
        assert debit == sum(Decimal(line["credit"]) for line in entry["lines"]), entry
    # What the books show after the run (domain.md): the operator is owed 11,800 and owes
    # 5,000; 2,000 margin on 1,000,000 redeemed points; 4,800 liability behind the 400,000
    # points still outstanding, at their issue price.
    assert journal_balances(journal) == {
        ("1200", "fuel"): Decimal("2800.00"),
        ("1200", "grocer"): Decimal("9000.00"),
        ("2100", "cinema"): Decimal("-5000.00"),
        ("2400", None): Decimal("-4800.00"),
        ("4100", None): Decimal("-2000.00"),
    }
    kinds = [(entry["partner_id"], entry["kind"]) for entry in journal["entries"]]
    assert kinds == [
        ("cinema", "redemption"),
        ("fuel", "issuance"),
        ("fuel", "redemption"),
        ("fuel", "netting"),
        ("grocer", "issuance"),
        ("grocer", "redemption"),
        ("grocer", "netting"),
    ]

    as_csv = await client.get(
        f"/v1/settlements/{RUN_ID}/journal", headers=finance_headers | {"Accept": "text/csv"}
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert sum(Decimal(r["debit"]) for r in rows) == sum(Decimal(r["credit"]) for r in rows)
    assert sum(Decimal(r["debit"]) for r in rows) == Decimal("33800.00")
    dot_csv = await client.get(f"/v1/settlements/{RUN_ID}/journal.csv", headers=finance_headers)
    assert dot_csv.text == as_csv.text
    missing = await client.get("/v1/settlements/stl_nope/journal", headers=finance_headers)
    assert missing.status_code == 404


async def test_breakage_enters_the_journal_at_issue_price(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(
        member, 1_000, reference="promo", expires_at=clock.now() + timedelta(hours=2)
    )
    await grocer.client.earn(member, 500, reference="order")
    clock.set(datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    run_id = await _compute(client, admin_headers, PERIOD_END)

    journal = (
        await client.get(f"/v1/settlements/{run_id}/journal", headers=finance_headers)
    ).json()

    assert journal["status"] == "computed"
    [breakage] = [entry for entry in journal["entries"] if entry["kind"] == "breakage"]
    assert [(line["account"], line["debit"], line["credit"]) for line in breakage["lines"]] == [
        ("2400", "12.00", "0.00"),
        ("4200", "0.00", "12.00"),
    ]
    assert journal_balances(journal) == {
        ("1200", "grocer"): Decimal("18.00"),  # 1,500 points x 0.012
        ("2400", None): Decimal("-6.00"),  # 500 points outstanding x 0.012
        ("4200", None): Decimal("-12.00"),
    }
    assert journal["totals"][0]["balanced"] is True


class TestAccountCodes:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        """The app is built from these settings: the chart of accounts is read once, there."""
        return settings.with_changes(account_receivable="AR-100", account_points_liability="L-2400")

    async def test_account_codes_come_from_the_settings(
        self,
        onboard: PartnerFactory,
        client: httpx.AsyncClient,
        clock: FrozenClock,
        admin_headers: dict[str, str],
        finance_headers: dict[str, str],
    ) -> None:
        await _approved_example(onboard, client, clock, admin_headers, finance_headers)
        journal = (
            await client.get(f"/v1/settlements/{RUN_ID}/journal", headers=finance_headers)
        ).json()
        accounts = {line["account"] for entry in journal["entries"] for line in entry["lines"]}
        assert accounts == {"AR-100", "2100", "L-2400", "4100"}


# -- month-end close, end to end -------------------------------------------------------------


async def test_month_end_close_end_to_end(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    """Trade, compute, approve, list documents, read the PDF, pay in part then in full,
    age the receivables on a later date, and balance the journal."""
    grocer, fuel, cinema = await worked_example(onboard, clock)
    run_id = await _compute(client, admin_headers, PERIOD_END)
    approved = await approve_run(client, finance_headers, run_id)
    assert approved["status"] == "approved"

    documents = await fetch_documents(client, finance_headers, run_id)
    invoice = documents["fuel"]
    assert (invoice["number"], invoice["total"]["amount"]) == ("INV-2026-000001", "2800.00")
    pdf = await fuel.client.request("GET", f"/v1/documents/{invoice['document_id']}.pdf")
    printed = pdf_text(pdf.content)
    for expected in ("INV-2026-000001", "Fuel", "2,800.00 EUR", DUE_DATE):
        assert expected in printed, expected

    part = payment_body(
        "fuel", "1000.00", document_id=invoice["document_id"], value_date="2026-12-05"
    )
    first = await client.post(PAYMENTS, json=part, headers=keyed(finance_headers, "e2e-1"))
    assert first.json()["allocations"][0]["amount"]["amount"] == "1000.00"
    middle = await fetch_receivables(client, finance_headers, "2026-12-31")
    assert middle["fuel"]["documents"][0]["amount_open"]["amount"] == "1800.00"
    assert middle["fuel"]["documents"][0]["days_past_due"] == 23
    rest = payment_body("fuel", "1800.00", value_date="2027-01-15")
    second = await client.post(PAYMENTS, json=rest, headers=keyed(finance_headers, "e2e-2"))
    assert second.json()["unapplied"]["amount"] == "0.00"
    fetched = await fuel.client.request("GET", f"/v1/documents/{invoice['document_id']}")
    assert fetched.json()["status"] == "paid"

    aged = await fetch_receivables(client, finance_headers, "2027-02-01")
    assert "fuel" not in aged  # paid in full, no credit left over
    assert aged["grocer"]["totals"]["31_60"]["amount"] == "9000.00"  # 55 days past due
    assert aged["cinema"]["payables"]["31_60"]["amount"] == "5000.00"
    # Before the second payment's value date, it was still partly open.
    assert (await fetch_receivables(client, finance_headers, "2027-01-14"))["fuel"]["totals"][
        "31_60"
    ]["amount"] == "1800.00"

    journal = (
        await client.get(f"/v1/settlements/{run_id}/journal", headers=finance_headers)
    ).json()
    assert [(t["currency"], t["balanced"]) for t in journal["totals"]] == [("EUR", True)]
    assert journal["totals"][0]["debit"] == journal["totals"][0]["credit"]
    assert (await grocer.client.statement(run_id))["status"] == "approved"
    assert (await cinema.client.statement(run_id))["line"]["direction"] == "operator_pays"
