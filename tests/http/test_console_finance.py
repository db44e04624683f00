"""The console's month-end close in-process: approving a run (and refusing an unreconciled
one with the API's message), document PDFs through the session, a payment form submitted
twice recording once, receivables and the roll-forward equal to the API's, and four eyes on
adjustments. (tests/browser drives the same pages in a real Chromium.)"""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.http import test_console
from tests.http.test_console import (
    PERIOD_END,
    RUN_ID,
    csrf_token_of,
    field_text,
    operator_token,
    sign_in,
)

settled = test_console.settled  # the worked example, settled (a fixture)


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert match is not None, f"the form has {name}"
    return match.group(1)


async def _count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_finance_approves_a_run_reads_its_documents_and_records_a_payment_once(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settled: dict[str, object],
    finance_headers: dict[str, str],
) -> None:
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    page = await client.get(f"/console/runs/{RUN_ID}")
    assert field_text(page.text, "status") == "not approved"
    assert "No documents yet" in page.text

    forged = await client.post(f"/console/runs/{RUN_ID}/approval", data={})
    assert forged.status_code == 403
    approved = await client.post(
        f"/console/runs/{RUN_ID}/approval", data={"csrf_token": csrf_token_of(page.text)}
    )
    assert (approved.status_code, approved.headers["location"]) == (303, f"/console/runs/{RUN_ID}")
    page = await client.get(f"/console/runs/{RUN_ID}")
    assert field_text(page.text, "status") == "approved"
    documents = (
        await client.get(f"/v1/settlements/{RUN_ID}/documents", headers=finance_headers)
    ).json()["items"]
    assert len(documents) == 3
    for document in documents:
        assert document["number"] in page.text
        pdf = await client.get(f"/console/documents/{document['document_id']}.pdf")
        assert pdf.status_code == 200
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF")
    assert (await client.get("/console/documents/doc_nope.pdf")).status_code == 404

    invoice = next(d for d in documents if d["type"] == "invoice")
    form = await client.get(f"/console/payments?document={invoice['document_id']}")
    fields = {
        "csrf_token": csrf_token_of(form.text),
        "idempotency_key": _hidden(form.text, "idempotency_key"),
        "partner_id": invoice["partner_id"],
        "direction": "received",
        "amount": invoice["total"]["amount"],
        "currency": "EUR",
        "value_date": "2026-11-25",
        "bank_reference": "SEPA-1",
        "document_id": invoice["document_id"],
    }
    first = await client.post("/console/payments", data=fields)
    again = await client.post("/console/payments", data=fields)  # a double submit
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    assert await _count(engine, "SELECT count(*) FROM payments") == 1
    receivables = await client.get(first.headers["location"])
    assert "recorded" in receivables.text
    api = await client.get(f"/v1/documents/{invoice['document_id']}", headers=finance_headers)
    assert api.json()["status"] == "paid"

    # Two submissions of one form at the same moment: the second waits for the first's
    # answer instead of failing, and one payment is recorded.
    form = await client.get(f"/console/payments?document={invoice['document_id']}")
    other = next(d for d in documents if d["type"] == "invoice" and d != invoice)
    racing = fields | {
        "idempotency_key": _hidden(form.text, "idempotency_key"),
        "partner_id": other["partner_id"],
        "document_id": other["document_id"],
        "amount": "0.01",
    }
    answers = await asyncio.gather(*(client.post("/console/payments", data=racing) for _ in "ab"))
    assert [a.status_code for a in answers] == [303, 303]
    assert answers[0].headers["location"] == answers[1].headers["location"]
    assert await _count(engine, "SELECT count(*) FROM payments") == 2

    # The same form key with another amount is refused, as an API retry would be.
    changed = await client.post("/console/payments", data=fields | {"amount": "1.00"})
    assert changed.status_code == 422
    assert await _count(engine, "SELECT count(*) FROM payments") == 2
    negative = fields | {"idempotency_key": str(uuid.uuid4()), "amount": "-5"}
    bad = await client.post("/console/payments", data=negative)
    no_key = await client.post("/console/payments", data=fields | {"idempotency_key": ""})
    assert no_key.status_code == 422
    assert bad.status_code == 422
    assert await _count(engine, "SELECT count(*) FROM payments") == 2


async def test_an_unreconciled_run_is_refused_with_the_apis_message(
    client: httpx.AsyncClient, engine: AsyncEngine, finance_headers: dict[str, str]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO settlement_runs VALUES ('stl_bad', '1970-01-01', '2026-11-20', "
                "'2026-11-20', 'test', false, 0, 0, 0, 0, 0, 0, 5, false, true, true, true)"
            )
        )
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    page = await client.get("/console/adjustments")  # any form: the session's CSRF token
    refused = await client.post(
        "/console/runs/stl_bad/approval", data={"csrf_token": csrf_token_of(page.text)}
    )
    api = await client.post("/v1/settlements/stl_bad/approval", headers=finance_headers)
    assert refused.status_code == api.status_code == 409
    assert 'data-code="run_unreconciled"' in refused.text
    assert api.json()["detail"] in refused.text
    assert await _count(engine, "SELECT count(*) FROM settlement_approvals") == 0


async def test_receivables_and_roll_forward_pages_equal_the_api(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settled: dict[str, object],
    finance_headers: dict[str, str],
) -> None:
    await client.post(f"/v1/settlements/{RUN_ID}/approval", headers=finance_headers)
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    for as_of in ("2026-11-24", "2027-03-31"):
        page = await client.get(f"/console/receivables?as_of={as_of}")
        api = await client.get(f"/v1/reports/receivables?as_of={as_of}", headers=finance_headers)
        partners = api.json()["partners"]
        assert partners
        for partner in partners:
            for bucket in ("not_due", "1_30", "31_60", "61_90", "over_90", "total"):
                shown = field_text(page.text, bucket, partner["partner_id"])
                assert shown == partner["totals"][bucket]["amount"], (as_of, bucket)
    assert (await client.get("/console/receivables?as_of=2026-13-01")).status_code == 422

    overview = await client.get("/console")
    api = await client.get("/v1/reports/receivables?as_of=2026-11-24", headers=finance_headers)
    grocer = next(p for p in api.json()["partners"] if p["partner_id"] == "grocer")
    assert field_text(overview.text, "receivable_total", "grocer") == (
        f"EUR {grocer['totals']['total']['amount']}"
    )

    page = await client.get(f"/console/liabilities?as_of={PERIOD_END}")
    assert page.status_code == 200
    api_rf = (
        await client.get(f"/v1/reports/liabilities?as_of={PERIOD_END}", headers=finance_headers)
    ).json()
    for issuer in api_rf["issuers"]:
        for figure in ("opening", "issued", "redeemed", "closing"):
            cell = re.search(
                rf'data-issuer="{issuer["issuer"]}" data-figure="{figure}">'
                r'<span data-field="points">([^<]*)<',
                page.text,
            )
            assert cell is not None, (issuer["issuer"], figure)
            assert cell.group(1) == f"{issuer[figure]['points']:,}"
    assert field_text(page.text, "ties") == "ties to the run"
    elsewhere = "/liabilities?as_of=2026-11-23T00:00:00Z"  # no run ends then
    missing = await client.get("/console" + elsewhere)
    api_missing = await client.get("/v1/reports" + elsewhere, headers=finance_headers)
    assert missing.status_code == api_missing.status_code == 422
    assert api_missing.json()["detail"] in missing.text


async def test_an_adjustment_needs_a_second_operator_in_the_console(
    client: httpx.AsyncClient, engine: AsyncEngine, settled: dict[str, object]
) -> None:
    async with engine.connect() as conn:
        member = (await conn.execute(text("SELECT min(member_id) FROM members"))).scalar_one()
    _, first = await operator_token(engine, "finance", "fin")
    _, second = await operator_token(engine, "admin", "ada")
    await sign_in(client, first)
    form = await client.get("/console/adjustments")
    assert "No adjustment is waiting" in form.text
    fields = {
        "csrf_token": csrf_token_of(form.text),
        "idempotency_key": _hidden(form.text, "idempotency_key"),
        "member_id": member,
        "points": "250",
        "issuer": "operator",
        "reason": "goodwill: late delivery",
    }
    requested = await client.post("/console/adjustments", data=fields)
    assert requested.status_code == 303
    assert (await client.post("/console/adjustments", data=fields)).status_code == 303
    assert await _count(engine, "SELECT count(*) FROM adjustments") == 1
    listed = await client.get("/console/adjustments")
    adjustment_id = re.search(r'data-adjustment="(adj_[^"]+)"', listed.text)
    assert adjustment_id is not None
    approval = f"/console/adjustments/{adjustment_id.group(1)}/approval"

    own = await client.post(approval, data={"csrf_token": csrf_token_of(listed.text)})
    assert own.status_code == 403
    assert 'data-code="four_eyes_required"' in own.text
    assert "another operator must approve it" in own.text
    assert await _count(engine, "SELECT count(*) FROM adjustments WHERE status = 'pending'") == 1

    client.cookies.clear()
    await sign_in(client, second)
    listed = await client.get("/console/adjustments")
    approved = await client.post(approval, data={"csrf_token": csrf_token_of(listed.text)})
    assert approved.status_code == 303
    after = await client.get(approved.headers["location"])
    assert "approved and posted" in after.text
    assert "No adjustment is waiting" in after.text
    assert await _count(engine, "SELECT count(*) FROM adjustments WHERE status = 'posted'") == 1
