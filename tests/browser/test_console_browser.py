"""The console in a real Chromium against a real `exchange serve --workers 2`: sign in,
read the overview, open a run, drill down to the postings behind a line, use the admin
forms, and check that what the pages show is what the API answers. Every page visited
passes axe-core (no serious or critical violation) at 1280 px and on a phone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from axe_playwright_python.sync_playwright import Axe
from prometheus_client.parser import text_string_to_metric_families

from partners.signing import generate_keypair
from tests.browser.conftest import POOL_SIZE, WORKERS, Exchange

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
    page.screenshot(path=str(screenshots / "overview.png"))

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
    page.screenshot(path=str(screenshots / "run.png"))

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
    page.screenshot(path=str(screenshots / "statement.png"))

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
    page.screenshot(path=str(screenshots / "run-phone.png"))
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

    # Both workers' counts, merged: however uvicorn spread the 20 requests.
    assert total("exchange_http_requests_total", route="/health", status="200") >= 20
    assert total("exchange_db_pool_size") == WORKERS * POOL_SIZE
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
