"""Closing the month through the API (contract §8): adjustments with four eyes, partners
leaving, and what a disputed transaction shows. Real PostgreSQL, real signatures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from partners.errors import PartnerAPIError
from tests.http.conftest import OnboardedPartner, PartnerFactory


async def _member_with_points(partner: OnboardedPartner, points: int) -> str:
    member = (await partner.client.enrol_member())["member_id"]
    await partner.client.earn(member, points, reference=f"seed-{member}")
    return str(member)


async def _history(client: httpx.AsyncClient, partner: OnboardedPartner, member: str) -> Any:
    session = await partner.client.create_session(member)
    response = await client.get(
        f"/v1/members/{member}/transactions",
        headers={"Authorization": f"Bearer {session['token']}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def _request(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], key: str
) -> httpx.Response:
    return await client.post(
        "/v1/adjustments", json=body, headers=headers | {"Idempotency-Key": key}
    )


# -- adjustments -------------------------------------------------------------------------------


async def test_an_adjustment_posts_only_with_a_second_operator(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = await _member_with_points(grocer, 100)
    body = {"member_id": member, "points": 500, "issuer": "operator", "reason": "goodwill"}

    created = await _request(client, finance_headers, body, "goodwill-1")
    replayed = await _request(client, finance_headers, body, "goodwill-1")
    reused = await _request(client, finance_headers, body | {"points": 5}, "goodwill-1")
    keyless = await client.post("/v1/adjustments", json=body, headers=finance_headers)

    assert created.status_code == 201, created.text
    adjustment = created.json()
    assert (adjustment["status"], adjustment["points"], adjustment["issuer"]) == (
        "pending",
        500,
        "operator",
    )
    assert adjustment["requested_by"] == "test-finance"
    assert (replayed.status_code, replayed.content) == (201, created.content)
    assert replayed.headers["idempotency-replayed"] == "true"
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert (keyless.status_code, keyless.json()["code"]) == (400, "idempotency_key_missing")

    path = f"/v1/adjustments/{adjustment['adjustment_id']}/approval"
    own = await client.post(path, headers=finance_headers)
    assert (own.status_code, own.json()["code"]) == (403, "four_eyes_required")
    assert (await grocer.client.balance(member))["available"] == 100  # nothing posted

    approved = await client.post(path, headers=admin_headers)
    again = await client.post(path, headers=admin_headers)

    assert approved.status_code == 200, approved.text
    posted = approved.json()
    assert (posted["status"], posted["approved_by"]) == ("posted", "test-admin")
    assert posted["approved_at"] == "2026-11-23T10:00:00Z"
    assert again.json() == posted
    assert (await grocer.client.balance(member))["available"] == 600
    [latest, *_] = await _history(client, grocer, member)
    assert (latest["type"], latest["points"], latest["partner_id"]) == (
        "adjustment",
        500,
        "operator",
    )
    assert latest["transaction_id"] == posted["transaction_id"]
    shown = await client.get(f"/v1/adjustments/{posted['adjustment_id']}", headers=finance_headers)
    assert shown.json() == posted


async def test_a_debit_adjustment_draws_like_a_burn_and_never_beyond_available(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 300, reference="later")
    await grocer.client.earn(
        member, 100, reference="promo", expires_at=clock.now() + timedelta(days=10)
    )
    debit = {"member_id": member, "points": -150, "issuer": "grocer", "reason": "double credit"}

    too_much = await _request(client, finance_headers, debit | {"points": -401}, "too-much")
    zero = await _request(client, finance_headers, debit | {"points": 0}, "zero")
    nobody = await _request(
        client, finance_headers, debit | {"member_id": "mem_" + "0" * 32}, "nobody"
    )
    stranger = await _request(client, finance_headers, debit | {"issuer": "acme"}, "acme")
    extra = await _request(client, finance_headers, debit | {"amount": 1}, "extra")
    created = await _request(client, finance_headers, debit, "debit-1")
    approved = await client.post(
        f"/v1/adjustments/{created.json()['adjustment_id']}/approval", headers=admin_headers
    )

    assert (too_much.status_code, too_much.json()["code"]) == (422, "insufficient_points")
    assert (zero.status_code, nobody.status_code, stranger.status_code) == (422, 404, 422)
    assert nobody.json()["code"] == "member_not_found"
    assert extra.status_code == 422
    assert approved.json()["status"] == "posted"
    balance = await grocer.client.balance(member)
    assert balance["available"] == 250
    # Soonest-expiring first: the promo lot went entirely, then 50 of the other.
    assert balance["expiring"][0]["points"] == 250
    [latest, *_] = await _history(client, grocer, member)
    assert (latest["type"], latest["points"]) == ("adjustment", -150)


async def test_a_pending_adjustment_expires_after_seven_days(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = await _member_with_points(grocer, 10)
    created = await _request(
        client,
        finance_headers,
        {"member_id": member, "points": 40, "issuer": "grocer", "reason": "missing earn"},
        "late-1",
    )
    adjustment_id = created.json()["adjustment_id"]
    assert created.json()["expires_at"] == "2026-11-30T10:00:00Z"

    clock.advance(timedelta(days=7))
    late = await client.post(f"/v1/adjustments/{adjustment_id}/approval", headers=admin_headers)
    shown = await client.get(f"/v1/adjustments/{adjustment_id}", headers=admin_headers)
    unknown = await client.post("/v1/adjustments/adj_nope/approval", headers=admin_headers)

    assert (late.status_code, late.json()["code"]) == (409, "adjustment_not_pending")
    assert shown.json()["status"] == "expired"
    assert (unknown.status_code, unknown.json()["code"]) == (404, "adjustment_not_found")
    assert (await grocer.client.balance(member))["available"] == 10


async def test_adjustments_are_for_operators_only(
    onboard: PartnerFactory, client: httpx.AsyncClient
) -> None:
    grocer = await onboard("grocer")
    member = await _member_with_points(grocer, 10)
    with pytest.raises(PartnerAPIError) as signed:
        await grocer.client.request(
            "POST",
            "/v1/adjustments",
            json={"member_id": member, "points": 5, "issuer": "grocer", "reason": "x"},
        )
    assert signed.value.status == 401


# -- partners leaving --------------------------------------------------------------------------


async def test_a_terminated_partner_is_refused_for_ever_and_its_points_stay_valid(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer, cinema = await onboard("grocer"), await onboard("cinema")
    member = await _member_with_points(grocer, 1000)
    await cinema.client.burn(member, 1, reference="link")  # links the member to cinema

    path = "/v1/admin/partners/grocer"
    terminated = await client.patch(path, json={"status": "terminated"}, headers=admin_headers)
    back = await client.patch(path, json={"status": "active"}, headers=admin_headers)
    suspended = await client.patch(path, json={"status": "suspended"}, headers=admin_headers)
    key = await client.post(
        f"{path}/keys", json={"public_key": grocer.public_key}, headers=admin_headers
    )

    assert (terminated.status_code, terminated.json()["status"]) == (200, "terminated")
    assert (back.status_code, back.json()["code"]) == (409, "termination_final")
    assert suspended.status_code == 409
    assert key.status_code == 409
    with pytest.raises(PartnerAPIError) as refused:
        await grocer.client.balance(member)
    assert (refused.value.status, refused.value.code) == (403, "partner_terminated")
    with pytest.raises(PartnerAPIError) as earn:
        await grocer.client.earn(member, 5, reference="after")
    assert earn.value.code == "partner_terminated"

    # Its points stay valid and stay attributed to it.
    await cinema.client.burn(member, 400, reference="tickets")
    clock.set(datetime(2026, 11, 24, tzinfo=UTC))
    run = (
        await client.post(
            "/v1/admin/settlements",
            json={"period_end": "2026-11-24T00:00:00Z"},
            headers=admin_headers,
        )
    ).json()
    lines = {line["partner_id"]: line for line in run["lines"]}
    assert (lines["grocer"]["final"], lines["cinema"]["final"]) == (True, False)
    assert {"issuer_id": "grocer", "redeemer_id": "cinema", "points": 401} in run["cross_brand"]
    report = (await client.get("/v1/reports/liabilities", headers=finance_headers)).json()
    grocer_line = next(p for p in report["partners"] if p["partner_id"] == "grocer")
    assert grocer_line["outstanding_points"] == 599

    clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    later = (
        await client.post(
            "/v1/admin/settlements",
            json={"period_end": "2026-11-25T00:00:00Z"},
            headers=admin_headers,
        )
    ).json()
    assert {line["partner_id"]: line["final"] for line in later["lines"]}["grocer"] is False


async def test_the_operators_issuer_row_cannot_sign_or_change_status(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    path = "/v1/admin/partners/operator"
    status = await client.patch(path, json={"status": "active"}, headers=admin_headers)
    key = await client.post(
        f"{path}/keys",
        json={"public_key": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        headers=admin_headers,
    )
    assert (status.status_code, key.status_code) == (422, 422)


# -- disputes ----------------------------------------------------------------------------------


async def test_a_transaction_shows_its_purchase_and_prices(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    earned = await grocer.client.earn(member, purchase=("120.00", "EUR"), reference="order-991")
    patched = await client.patch(
        "/v1/admin/partners/grocer", json={"redemption_value": "0.009"}, headers=admin_headers
    )
    assert patched.status_code == 200
    burned = await grocer.client.burn(member, 20, reference="basket")

    assert earned["purchase"] == {"amount": "120.00", "currency": "EUR"}
    assert (earned["points"], earned["issue_price"]) == (120, "0.012")
    assert "redemption_value" not in earned
    assert burned["redemption_value"] == "0.009"
    assert "purchase" not in burned
    stored = await grocer.client.get_transaction(earned["transaction_id"])
    assert (stored["purchase"], stored["issue_price"]) == (earned["purchase"], "0.012")
    async with engine.connect() as conn:
        versions = dict(
            (await conn.execute(text("SELECT type, terms_version FROM postings"))).all()
        )
    assert versions == {"earn": 1, "burn": 2}  # each posting names the terms it was priced by


async def test_partners_filter_their_transactions_by_posting_time(
    onboard: PartnerFactory, clock: FrozenClock
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 10, reference="early")
    clock.advance(timedelta(hours=1))
    cut = clock.now()
    await grocer.client.earn(member, 20, reference="late")

    after = await grocer.client.list_transactions(posted_after=cut)
    before = await grocer.client.list_transactions(posted_before=cut)
    offset = await grocer.client.list_transactions(posted_after="2026-11-23T13:00:00+02:00")
    window = await grocer.client.list_transactions(
        posted_after=cut - timedelta(hours=2), posted_before=cut + timedelta(seconds=1)
    )

    assert [item["reference"] for item in after["items"]] == ["late"]
    assert [item["reference"] for item in before["items"]] == ["early"]
    assert [item["reference"] for item in offset["items"]] == ["late"]
    assert [item["reference"] for item in window["items"]] == ["late", "early"]
    with pytest.raises(PartnerAPIError) as bad:
        await grocer.client.list_transactions(posted_after="yesterday")
    assert bad.value.status == 422
    with pytest.raises(PartnerAPIError) as naive:
        await grocer.client.list_transactions(posted_before="2026-11-23T10:00:00")
    assert naive.value.status == 422


# -- run lines foot --------------------------------------------------------------------------


async def test_every_run_line_foots_with_its_rounding_difference(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> None:
    """Each amount is rounded once from its exact sum (kept), so net can differ from
    charge - credit by a cent; the line shows that cent."""
    odd = await onboard("odd", issue_price="0.0125", redemption_value="0.0075")
    member = (await odd.client.enrol_member())["member_id"]
    await odd.client.earn(member, 2, reference="e")  # 0.025 -> 0.02
    await odd.client.burn(member, 2, reference="b")  # 0.015 -> 0.02
    clock.set(datetime(2026, 11, 24, tzinfo=UTC))

    run = (
        await client.post(
            "/v1/admin/settlements",
            json={"period_end": "2026-11-24T00:00:00Z"},
            headers=admin_headers,
        )
    ).json()

    [line] = run["lines"]
    amounts = [
        line[name]["amount"]
        for name in ("issuance_charge", "redemption_credit", "net", "rounding_difference")
    ]
    assert amounts == ["0.02", "0.02", "0.01", "0.01"]
    assert line["expired_value"] == {"amount": "0.00", "currency": "EUR"}
    assert line["final"] is False
