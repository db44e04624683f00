"""The console in a real Chromium against a real `exchange serve --workers 2`: sign in,
read the overview, open a run, drill down to the postings behind a line, use the admin
forms, approve the run, read its documents and PDFs, record a payment (once, however often
the form is sent), follow the roll-forward, request and approve an adjustment with two
operators, and check that what the pages show is what the API answers. Every page visited
passes axe-core (no serious or critical violation) at 1280 px and on a phone."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from axe_playwright_python.sync_playwright import Axe
from prometheus_client.parser import text_string_to_metric_families

from partners.signing import generate_keypair
from tests.browser.conftest import (
    BATCH_PROCESSORS,
    POOL_SIZE,
    WORKERS,
    Exchange,
    save_screenshot,
)

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
_axe = Axe()


def _accessible(page: Any) -> None:
    violations = _axe.run(page).response["violations"]
    serious = [
        (v["id"], v["impact"], [node["target"] for node in v["nodes"]][:3])
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"{page.url}: {serious}"


def _sign_in(page: Any, exchange: Exchange, token: str) -> None:
    page.goto(exchange.base_url + "/console")
    assert page.url.endswith("/console/sign-in")  # not signed in: sent to sign in
    _accessible(page)
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(exchange.base_url + "/console")


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def test_an_admin_reads_overview_run_and_statement_equal_to_the_api(
    exchange: Exchange, browser: Any, screenshots: Path
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    _sign_in(page, exchange, exchange.admin_token)
    cookie = next(c for c in context.cookies() if c["name"] == "exchange_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    liabilities = exchange.api("/v1/reports/liabilities")
    for line in liabilities["partners"]:
        cell = f'[data-field="outstanding_points"][data-partner="{line["partner_id"]}"]'
        assert _text(page, cell) == f"{line['outstanding_points']:,}"
        value = f'[data-field="value"][data-partner="{line["partner_id"]}"]'
        assert _text(page, value) == f"{line['value']['currency']} {line['value']['amount']}"
    assert _text(page, '[data-field="period_issued"]') == "7,000"
    assert _text(page, '[data-field="last_run_reconciled"]') == "reconciled"
    assert page.locator("svg[role=img]").count() == 2  # the two charts
    _accessible(page)
    save_screenshot(page, screenshots / "overview.png")

    page.get_by_role("link", name="Settlement runs").click()
    page.get_by_role("link", name=exchange.run_id).click()
    page.wait_for_url(f"**/console/runs/{exchange.run_id}")
    run = exchange.api(f"/v1/settlements/{exchange.run_id}")
    for line in run["lines"]:
        row = f'tr[data-partner="{line["partner_id"]}"]'
        assert _text(page, f'{row} [data-field="issued_points"]') == f"{line['issued_points']:,}"
        assert (
            _text(page, f'{row} [data-field="redeemed_points"]') == f"{line['redeemed_points']:,}"
        )
        assert _text(page, f'{row} [data-field="net"]') == f"EUR {line['net']['amount']}"
    assert (
        _text(page, '[data-field="outstanding_end"]') == f"{run['controls']['outstanding_end']:,}"
    )
    heat = page.locator('td[data-issuer="grocer"][data-redeemer="cinema"]')
    assert heat.inner_text() == "500,000"
    assert "heat-5" in heat.get_attribute("class")
    assert page.locator(".check.ok").count() == 4  # every control green
    _accessible(page)
    save_screenshot(page, screenshots / "run.png")

    # Drill down: the grocer's line -> the postings behind it.
    page.get_by_role("link", name="Grocer").click()
    page.wait_for_url(f"**/console/runs/{exchange.run_id}/statements/grocer")
    grocer = next(line for line in run["lines"] if line["partner_id"] == "grocer")
    assert _text(page, '[data-field="earned_points"]') == f"{grocer['earned_points']:,}"
    assert _text(page, '[data-total="earn"]') == f"earn {grocer['earned_points']:,}"
    assert _text(page, '[data-total="burn"]') == f"burn {grocer['burned_points']:,}"
    assert page.locator("tr[data-posting]").count() == 2  # basket-1 and basket-2
    assert page.get_by_text("after-close").count() == 0  # posted after the period
    _accessible(page)
    save_screenshot(page, screenshots / "statement.png")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/sign-in")
    page.goto(exchange.base_url + "/console/runs")
    assert page.url.endswith("/console/sign-in")
    context.close()


def test_admin_forms_work_and_a_post_without_the_csrf_token_is_refused(
    exchange: Exchange, browser: Any
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    _sign_in(page, exchange, exchange.admin_token)
    page.get_by_role("link", name="Partners").click()
    _accessible(page)
    page.get_by_label("Partner id (slug)").fill("bakery")
    page.get_by_label("Name", exact=True).fill("Bakery")
    page.get_by_label("Issue price per point").fill("0.011")
    page.get_by_label("Redemption value per point").fill("0.009")
    page.get_by_role("button", name="Onboard").click()
    page.wait_for_url("**/console/partners/bakery")
    _, public_key = generate_keypair()
    page.get_by_label("New public key (base64url Ed25519)").fill(public_key)
    page.get_by_role("button", name="Add key").click()
    page.get_by_role("button", name="Suspend").click()
    page.wait_for_url("**/console/partners/bakery")
    assert _text(page, '[data-field="status"]') == "suspended"
    _accessible(page)
    partner = exchange.api("/v1/admin/partners/bakery")
    assert partner["status"] == "suspended"
    assert partner["issue_price"] == "0.011"
    assert [key["status"] for key in partner["keys"]] == ["active"]

    # The same browser session (its cookie), but no CSRF token in the form: refused.
    forged = page.request.post(
        exchange.base_url + "/console/partners/bakery/status", form={"status": "active"}
    )
    assert forged.status == 403
    assert exchange.api("/v1/admin/partners/bakery")["status"] == "suspended"
    context.close()


def test_finance_on_a_phone_reads_everything_and_sees_no_admin_forms(
    exchange: Exchange, browser: Any, screenshots: Path
) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    _sign_in(page, exchange, exchange.finance_token)
    for path in (
        "/console",
        "/console/runs",
        f"/console/runs/{exchange.run_id}",
        f"/console/runs/{exchange.run_id}/statements/cinema",
        "/console/liabilities",
        "/console/partners",
        "/console/partners/grocer",
        "/console/receivables",
        "/console/payments",
        "/console/adjustments",
        "/console/liabilities?as_of="
        + exchange.api(f"/v1/settlements/{exchange.run_id}")["period_end"],
    ):
        page.goto(exchange.base_url + path)
        assert page.url == exchange.base_url + path
        # Wide tables scroll in their own box; the page itself never scrolls sideways.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"
        _accessible(page)
        assert page.get_by_role("button", name="Onboard").count() == 0
        assert page.get_by_role("button", name="Run").count() == 0
    page.goto(exchange.base_url + f"/console/runs/{exchange.run_id}")
    save_screenshot(page, screenshots / "run-phone.png")
    # A finance session posting an admin form (with a valid CSRF token) is refused.
    page.goto(exchange.base_url + "/console/partners/grocer")
    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    refused = page.request.post(
        exchange.base_url + "/console/partners/grocer/status",
        form={"status": "suspended", "csrf_token": csrf},
    )
    assert refused.status == 403
    assert exchange.api("/v1/admin/partners/grocer")["status"] == "active"
    context.close()


def test_metrics_of_a_real_multi_worker_server_parse_and_add_up(exchange: Exchange) -> None:
    for _ in range(20):
        assert httpx.get(exchange.base_url + "/health", timeout=5).status_code == 200
    text = httpx.get(exchange.base_url + "/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(
                f"|{name}={value}" for name, value in sorted(sample.labels.items())
            )
            samples[key] = samples.get(key, 0) + sample.value

    def total(prefix: str, **labels: str) -> float:
        wanted = [f"|{name}={value}" for name, value in labels.items()]
        return sum(
            value
            for key, value in samples.items()
            if key.split("|")[0] == prefix and all(part in key for part in wanted)
        )

    # Both workers' counts, merged: however the server spread the 20 requests.
    assert total("exchange_http_requests_total", route="/health", status="200") >= 20
    assert total("exchange_db_pool_size") == WORKERS * (POOL_SIZE + 2 * BATCH_PROCESSORS)
    assert total("exchange_postings_total", type="earn") == 3
    assert total("exchange_postings_total", type="burn") == 3
    assert total("exchange_settlement_run_duration_seconds_count") == 1
    assert total("exchange_group_commit_batch_size_count") >= 1


def test_metrics_are_open_on_loopback_and_unknown_console_pages_are_404(
    exchange: Exchange,
) -> None:
    # A real socket from 127.0.0.1 is loopback: no token needed.
    assert httpx.get(exchange.base_url + "/metrics", timeout=5).status_code == 200
    unknown = httpx.get(exchange.base_url + "/console/nothing-here", timeout=5)
    assert unknown.status_code == 404


def _form_fields(page: Any, action: str) -> dict[str, str]:
    fields: dict[str, str] = page.evaluate(
        "action => Object.fromEntries(new FormData("
        "document.querySelector(`form[action='${action}']`)))",
        action,
    )
    return fields


def test_finance_approves_a_run_records_a_payment_once_and_follows_the_roll_forward(
    exchange: Exchange, browser: Any, screenshots: Path
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    _sign_in(page, exchange, exchange.finance_token)
    page.get_by_role("link", name="Settlement runs").click()
    page.get_by_role("link", name=exchange.run_id).click()
    page.wait_for_url(f"**/console/runs/{exchange.run_id}")
    if page.get_by_role("button", name="Approve").count():
        page.get_by_role("button", name="Approve").click()
        page.wait_for_url(f"**/console/runs/{exchange.run_id}")
    assert _text(page, '[data-field="status"]') == "approved"
    assert exchange.api(f"/v1/settlements/{exchange.run_id}")["status"] == "approved"
    documents = exchange.api(f"/v1/settlements/{exchange.run_id}/documents")["items"]
    assert len(documents) == 3
    for document in documents:
        row = f'tr[data-document="{document["document_id"]}"]'
        assert _text(page, f'{row} [data-field="number"]') == document["number"]
        total = document["total"]
        assert (
            _text(page, f'{row} [data-field="total"]') == f"{total['currency']} {total['amount']}"
        )
        href = page.locator(f"{row} a").get_attribute("href")
        pdf = page.request.get(exchange.base_url + href)
        assert pdf.status == 200
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.body().startswith(b"%PDF")
    _accessible(page)
    save_screenshot(page, screenshots / "run-approved.png")

    # The roll-forward of the run's period, from the run page.
    page.get_by_role("link", name="Liability roll-forward").click()
    page.wait_for_url("**/console/liabilities?as_of=*")
    period_end = exchange.api(f"/v1/settlements/{exchange.run_id}")["period_end"]
    forward = exchange.api(f"/v1/reports/liabilities?as_of={period_end}")
    for issuer in forward["issuers"]:
        for figure in ("opening", "issued", "redeemed", "closing"):
            cell = f'td[data-issuer="{issuer["issuer"]}"][data-figure="{figure}"]'
            assert _text(page, f'{cell} [data-field="points"]') == f"{issuer[figure]['points']:,}"
            value = issuer[figure]["value"]
            assert _text(page, f'{cell} [data-field="value"]') == (
                f"{value['currency']} {value['amount']}"
            )
    assert _text(page, '[data-field="ties"]') == "ties to the run"
    _accessible(page)
    save_screenshot(page, screenshots / "rollforward.png")

    # Record a payment against the grocer's invoice; a second submission of the same
    # form (a double click, a reload of the POST) records nothing more.
    invoice = next(d for d in documents if d["partner_id"] == "grocer")
    before = exchange.api(f"/v1/documents/{invoice['document_id']}")["amount_open"]["amount"]
    page.get_by_role("link", name="Record payment").click()
    page.get_by_label("Partner", exact=True).select_option("grocer")
    page.get_by_label("Amount", exact=True).fill("10.00")
    page.get_by_label("Bank reference").fill("SEPA-console-1")
    page.get_by_label("Document id (optional)").fill(invoice["document_id"])
    fields = _form_fields(page, "/console/payments")
    _accessible(page)
    page.get_by_role("button", name="Record payment").click()
    page.wait_for_url("**/console/receivables?as_of=*")
    assert "recorded" in _text(page, '[data-field="recorded"]')
    again = page.request.post(exchange.base_url + "/console/payments", form=fields)
    assert again.status == 200  # followed to the same receivables page
    after = exchange.api(f"/v1/documents/{invoice['document_id']}")["amount_open"]["amount"]
    assert Decimal(before) - Decimal(after) == Decimal("10.00")

    # The receivables page shows the API's numbers for its as_of.
    as_of = _text(page, '[data-field="as_of"]')
    report = exchange.api(f"/v1/reports/receivables?as_of={as_of}")
    assert report["partners"]
    for partner in report["partners"]:
        row = f'tr[data-partner="{partner["partner_id"]}"]'
        for bucket in ("not_due", "1_30", "31_60", "61_90", "over_90", "total"):
            assert (
                _text(page, f'{row} [data-field="{bucket}"]')
                == (partner["totals"][bucket]["amount"])
            )
        assert (
            _text(page, f'{row} [data-field="payables_total"]')
            == (partner["payables"]["total"]["amount"])
        )
    _accessible(page)
    save_screenshot(page, screenshots / "receivables.png")

    page.get_by_role("link", name="Overview").click()
    today = exchange.api(f"/v1/reports/receivables?as_of={date.today().isoformat()}")
    grocer = next(p for p in today["partners"] if p["partner_id"] == "grocer")
    owed = grocer["totals"]["total"]
    assert _text(page, 'tr[data-partner="grocer"] [data-field="receivable_total"]') == (
        f"{owed['currency']} {owed['amount']}"
    )
    context.close()


def test_an_adjustment_needs_two_operators_in_the_console(
    exchange: Exchange, browser: Any, screenshots: Path
) -> None:
    finance = browser.new_context(viewport=DESKTOP)
    page = finance.new_page()
    _sign_in(page, exchange, exchange.finance_token)
    page.goto(exchange.base_url + f"/console/runs/{exchange.run_id}/statements/grocer")
    member = page.locator("tr[data-posting] code").filter(has_text="mem_").first.inner_text()
    page.get_by_role("link", name="Adjustments").click()
    page.get_by_label("Member id").fill(member)
    page.get_by_label("Points (+ credits the member, - debits)").fill("100")
    page.get_by_label("Reason").fill("goodwill: console four-eyes test")
    page.get_by_role("button", name="Request adjustment").click()
    page.wait_for_url("**/console/adjustments")
    row = page.locator("tr[data-adjustment]", has_text="console four-eyes test")
    adjustment_id = row.get_attribute("data-adjustment")
    assert (
        _text(page, f'tr[data-adjustment="{adjustment_id}"] [data-field="requested_by"]') == "finn"
    )
    _accessible(page)
    save_screenshot(page, screenshots / "adjustments.png")

    # The requester cannot approve it: the API's 403 and its message.
    page.get_by_role("button", name=f"Approve {adjustment_id}").click()
    assert _text(page, '[data-code="four_eyes_required"]') == (
        "finn requested this adjustment; another operator must approve it."
    )
    assert exchange.api(f"/v1/adjustments/{adjustment_id}")["status"] == "pending"
    _accessible(page)
    finance.close()

    admin = browser.new_context(viewport=DESKTOP)
    page = admin.new_page()
    _sign_in(page, exchange, exchange.admin_token)
    page.get_by_role("link", name="Adjustments").click()
    page.get_by_role("button", name=f"Approve {adjustment_id}").click()
    page.wait_for_url("**/console/adjustments?posted=*")
    assert adjustment_id in _text(page, '[data-field="posted"]')
    assert page.locator(f'tr[data-adjustment="{adjustment_id}"]').count() == 0
    posted = exchange.api(f"/v1/adjustments/{adjustment_id}")
    assert (posted["status"], posted["approved_by"], posted["points"]) == ("posted", "ada", 100)
    admin.close()
