"""The web console in-process: sign-in, cookies, CSRF, roles, and numbers equal to the
API's. (tests/browser drives the same pages in a real Chromium against `exchange serve`.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.operators import create_operator_token, revoke_operator_token
from partners.signing import generate_keypair
from tests.http.conftest import PartnerFactory

PERIOD_END = "2026-11-24T00:00:00Z"
RUN_ID = "stl_20261124T000000Z"


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    changes: dict[str, str] = getattr(request, "param", {})
    return settings.with_changes(**changes)


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, "the page has a CSRF-protected form"
    return match.group(1)


def field_text(html: str, field: str, partner: str | None = None) -> str:
    if partner is None:
        pattern = rf'data-field="{field}">([^<]*)<'
    else:
        pattern = rf'<tr data-partner="{partner}">.*?data-field="{field}">([^<]*)<'
    match = re.search(pattern, html, re.DOTALL)
    assert match is not None, f"{field} is on the page"
    return match.group(1).strip()


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await client.get("/console/sign-in")
    assert page.status_code == 200
    return await client.post(
        "/console/sign-in", data={"token": token, "csrf_token": csrf_token_of(page.text)}
    )


async def operator_token(engine: AsyncEngine, role: str, name: str) -> tuple[str, str]:
    return await create_operator_token(engine, role, name)  # type: ignore[arg-type]


async def test_signing_in_sets_a_strict_http_only_cookie_and_signing_out_ends_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    anonymous = await client.get("/console")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/console/sign-in"

    _, token = await operator_token(engine, "admin", "ada")
    signed_in = await sign_in(client, token)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/console"
    set_cookie = next(
        value
        for value in signed_in.headers.get_list("set-cookie")
        if value.startswith("exchange_console=")
    )
    assert "HttpOnly" in set_cookie
    assert "samesite=strict" in set_cookie.lower()
    assert "Secure" in set_cookie  # the public URL is https
    assert token not in set_cookie, "the cookie is a session secret, not the operator token"

    overview = await client.get("/console")
    assert overview.status_code == 200
    assert "ada" in overview.text
    assert "Overview" in overview.text
    assert field_text(overview.text, "webhook_backlog") == "0"  # nothing written yet
    assert "default-src 'none'" in overview.headers["content-security-policy"]

    # Signing out without the form's CSRF token is refused, and changes nothing.
    forged = await client.post("/console/sign-out", data={})
    assert forged.status_code == 403
    assert (await client.get("/console")).status_code == 200

    signed_out = await client.post(
        "/console/sign-out", data={"csrf_token": csrf_token_of(overview.text)}
    )
    assert signed_out.status_code == 303
    client.cookies.clear()
    # The old cookie, replayed, no longer works: the session row is gone.
    stale = signed_in.cookies.get("exchange_console")
    assert stale
    client.cookies.set("exchange_console", stale, domain="exchange.test", path="/console")
    assert (await client.get("/console")).status_code == 303


async def test_a_bad_token_or_a_forged_sign_in_form_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    wrong = await sign_in(client, "xop_not-a-token")
    assert wrong.status_code == 401
    assert "Unknown or revoked operator token" in wrong.text
    assert "exchange_console=" not in "".join(wrong.headers.get_list("set-cookie"))

    _, token = await operator_token(engine, "admin", "ada")
    client.cookies.clear()
    forged = await client.post("/console/sign-in", data={"token": token, "csrf_token": "x"})
    assert forged.status_code == 403
    assert (await client.get("/console")).status_code == 303


@pytest.mark.parametrize("settings", [{"operator_rate_limit": "2/minute"}], indirect=True)
async def test_sign_in_attempts_are_limited_per_client_not_per_local_proxy(
    client: httpx.AsyncClient,
) -> None:
    # The in-process client's peer is 127.0.0.1: a reverse proxy on the same host, naming
    # each client in X-Forwarded-For (exchange.client_address).
    async def attempt(forwarded: str) -> int:
        headers = {"X-Forwarded-For": forwarded}
        page = await client.get("/console/sign-in", headers=headers)
        form = {"token": "xop_not-a-token", "csrf_token": csrf_token_of(page.text)}
        return (await client.post("/console/sign-in", data=form, headers=headers)).status_code

    assert [await attempt("203.0.113.9") for _ in range(3)] == [401, 401, 429]
    # Another client behind the same proxy keeps its own allowance: one guesser cannot
    # lock everyone out, as it would if the proxy's address were the key.
    assert await attempt("198.51.100.4") == 401
    # A client cannot reset its allowance by claiming another address in front.
    assert await attempt("198.51.100.77, 203.0.113.9") == 429


async def test_revoking_the_operator_token_ends_its_console_sessions(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    token_id, token = await operator_token(engine, "finance", "fin")
    assert (await sign_in(client, token)).status_code == 303
    assert (await client.get("/console")).status_code == 200
    await revoke_operator_token(engine, token_id)
    assert (await client.get("/console")).status_code == 303


async def test_finance_sees_no_admin_forms_and_admin_posts_refuse_finance(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    partners = await client.get("/console/partners")
    assert partners.status_code == 200
    assert "Onboard a partner" not in partners.text
    overview = await client.get("/console")
    body = {
        "csrf_token": csrf_token_of(overview.text),
        "partner_id": "grocer",
        "name": "Grocer",
        "settlement_currency": "EUR",
        "issue_price": "0.012",
        "redemption_value": "0.010",
    }
    refused = await client.post("/console/partners", data=body)
    assert refused.status_code == 403
    assert "admin role" in refused.text
    listed = await client.get("/v1/admin/partners", headers=admin_headers)
    assert listed.json() == []


async def test_admin_onboards_suspends_and_manages_keys_through_forms(
    client: httpx.AsyncClient, engine: AsyncEngine, admin_headers: dict[str, str]
) -> None:
    _, token = await operator_token(engine, "admin", "ada")
    await sign_in(client, token)
    csrf = csrf_token_of((await client.get("/console/partners")).text)
    onboarded = await client.post(
        "/console/partners",
        data={
            "csrf_token": csrf,
            "partner_id": "grocer",
            "name": "Grocer",
            "settlement_currency": "EUR",
            "issue_price": "0.012",
            "redemption_value": "0.010",
            "earn_rate": "1",
        },
    )
    assert onboarded.status_code == 303
    assert onboarded.headers["location"] == "/console/partners/grocer"
    api = (await client.get("/v1/admin/partners/grocer", headers=admin_headers)).json()
    assert api["issue_price"] == "0.012"
    assert api["earn_rates"] == {"EUR": "1"}

    bad = await client.post(
        "/console/partners",
        data={"csrf_token": csrf, "partner_id": "x", "name": "X", "settlement_currency": "EUR",
              "issue_price": "0.1234567", "redemption_value": "0.01"},
    )  # fmt: skip
    assert bad.status_code == 422
    assert "issue_price" in bad.text

    _, public_key = generate_keypair()
    added = await client.post(
        "/console/partners/grocer/keys", data={"csrf_token": csrf, "public_key": public_key}
    )
    assert added.status_code == 303
    keys = (await client.get("/v1/admin/partners/grocer", headers=admin_headers)).json()["keys"]
    assert [key["status"] for key in keys] == ["active"]
    revoked = await client.post(
        f"/console/partners/grocer/keys/{keys[0]['key_id']}/revoke", data={"csrf_token": csrf}
    )
    assert revoked.status_code == 303
    suspended = await client.post(
        "/console/partners/grocer/status", data={"csrf_token": csrf, "status": "suspended"}
    )
    assert suspended.status_code == 303
    api = (await client.get("/v1/admin/partners/grocer", headers=admin_headers)).json()
    assert api["status"] == "suspended"
    assert [key["status"] for key in api["keys"]] == ["revoked"]
    page = await client.get("/console/partners/grocer")
    assert field_text(page.text, "status") == "suspended"
    terminated = await client.post(
        "/console/partners/grocer/status", data={"csrf_token": csrf, "status": "gone"}
    )
    assert terminated.status_code == 422
    assert (await client.get("/v1/admin/partners/grocer", headers=admin_headers)).json()[
        "status"
    ] == "suspended"


@pytest.fixture
async def settled(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> dict[str, object]:
    """domain.md's worked example, settled through the API; the run's JSON."""
    grocer, fuel, cinema = await onboard("grocer"), await onboard("fuel"), await onboard("cinema")
    shopper = (await grocer.client.enrol_member())["member_id"]
    driver = (await fuel.client.enrol_member())["member_id"]
    await grocer.client.earn(shopper, 1_000_000, reference="basket-1")
    await fuel.client.earn(driver, 400_000, reference="tank-1")
    await grocer.client.burn(shopper, 300_000, reference="basket-2")
    await cinema.client.burn(shopper, 500_000, reference="tickets")
    await fuel.client.burn(driver, 200_000, reference="tank-2")
    clock.set(datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    await grocer.client.earn(shopper, 7_000, reference="after-close")
    created = await client.post(
        "/v1/admin/settlements", json={"period_end": PERIOD_END}, headers=admin_headers
    )
    assert created.status_code == 201
    run: dict[str, object] = created.json()
    return run


async def test_run_statement_and_overview_show_the_apis_numbers(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    settled: dict[str, object],
    finance_headers: dict[str, str],
) -> None:
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    page = await client.get(f"/console/runs/{RUN_ID}")
    assert page.status_code == 200
    lines = settled["lines"]
    assert isinstance(lines, list)
    assert len(lines) == 3
    for line in lines:
        partner = line["partner_id"]
        assert field_text(page.text, "issued_points", partner) == f"{line['issued_points']:,}"
        assert field_text(page.text, "redeemed_points", partner) == f"{line['redeemed_points']:,}"
        assert field_text(page.text, "net", partner) == f"EUR {line['net']['amount']}"
    # The heat map: cinema redeemed 500,000 of grocer's points, the largest flow.
    cell = re.search(r'class="num heat-(\d)" data-issuer="grocer" data-redeemer="cinema">([^<]*)<',
                     page.text)  # fmt: skip
    assert cell is not None
    assert cell.groups() == ("5", "500,000")
    assert "Conservation: <strong>passed" in page.text

    csv = await client.get(f"/console/runs/{RUN_ID}/report.csv")
    assert csv.status_code == 200
    api_csv = await client.get(f"/v1/settlements/{RUN_ID}/report.csv", headers=finance_headers)
    assert csv.text == api_csv.text

    statement = await client.get(f"/console/runs/{RUN_ID}/statements/grocer")
    assert statement.status_code == 200
    assert field_text(statement.text, "earned_points") == "1,000,000"
    # The drill-down: exactly the postings in the period, summing to the line; the earn
    # posted after the period closed is not among them.
    assert 'data-total="earn">earn 1,000,000' in statement.text
    assert 'data-total="burn">burn 300,000' in statement.text
    assert "basket-1" in statement.text
    assert "after-close" not in statement.text

    missing = await client.get(f"/console/runs/{RUN_ID}/statements/nobody")
    assert missing.status_code == 404
    assert (await client.get("/console/runs/stl_nope")).status_code == 404

    overview = await client.get("/console")
    api = (await client.get("/v1/reports/liabilities", headers=finance_headers)).json()
    for line in api["partners"]:
        shown = re.search(
            rf'data-field="outstanding_points" data-partner="{line["partner_id"]}">([^<]*)<',
            overview.text,
        )
        assert shown is not None
        assert shown.group(1) == f"{line['outstanding_points']:,}"
    assert field_text(overview.text, "period_issued") == "7,000"  # the open period so far
    assert field_text(overview.text, "last_run_reconciled") == "reconciled"

    runs = await client.get("/console/runs")
    assert RUN_ID in runs.text
    assert "Run settlement" not in runs.text


async def test_a_session_ends_after_eight_hours(
    client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> None:
    _, token = await operator_token(engine, "finance", "fin")
    await sign_in(client, token)
    clock.advance(timedelta(hours=7, minutes=59))
    assert (await client.get("/console/runs")).status_code == 200
    clock.advance(timedelta(minutes=1))
    assert (await client.get("/console/runs")).status_code == 303
