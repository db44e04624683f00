"""The partner and member API over HTTP (contract §1, §2.2, §3, §5), as a partner sees it.

Every error code of the partner API is provoked here through the real app on real
PostgreSQL; each refusal is checked for status, `code` and headers, and for leaving the
ledger exactly as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.errors import ServiceUnavailable
from exchange.service import LedgerService
from exchange.tables import idempotency_keys, postings
from partners.errors import PartnerAPIError
from partners.signing import BODY_COMPONENTS, REQUIRED_COMPONENTS
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.test_gateway_signatures import (
    assert_problem,
    json_body,
    sign_headers,
    url,
)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The default settings, or with the rate limits a test asks for (indirect param)."""
    limits: dict[str, str] = getattr(request, "param", {})
    return settings.with_changes(**limits)


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


@pytest.fixture
async def cinema(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("cinema", earn_rates={"EUR": "2", "USD": "1.5"})


@pytest.fixture
async def member_id(grocer: OnboardedPartner) -> str:
    """A member of the grocer with 500 available points."""
    member = await grocer.client.enrol_member(reference="card-1")
    await grocer.client.earn(member["member_id"], 500, reference="welcome")
    member_id: str = member["member_id"]
    return member_id


async def refused(call: Any) -> PartnerAPIError:
    with pytest.raises(PartnerAPIError) as caught:
        await call
    return caught.value


async def send(
    client: httpx.AsyncClient,
    partner: OnboardedPartner,
    clock: FrozenClock,
    method: str,
    path: str,
    body: bytes = b"",
    **sign: Any,
) -> httpx.Response:
    """A correctly signed raw request (for bodies the client would refuse to send)."""
    headers = sign_headers(partner, clock, method, path, body=body, **sign)
    return await client.request(method, url(path), content=body, headers=headers)


async def snapshot(engine: AsyncEngine) -> tuple[int, int]:
    """(postings, stored idempotency keys): what any effect would change."""
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(postings))
        keys = await conn.scalar(select(func.count()).select_from(idempotency_keys))
    return count or 0, keys or 0


# --- members, balances, sessions ----------------------------------------------------------------


async def test_enrol_returns_the_member_and_its_creation_time(grocer: OnboardedPartner) -> None:
    member = await grocer.client.enrol_member(reference="card-9")
    assert member.status == 201
    assert member["member_id"].startswith("mem_")
    assert len(member["member_id"]) <= 64
    assert member["created_at"] == "2026-11-23T10:00:00Z"
    balance = await grocer.client.balance(member["member_id"])
    assert balance.data == {
        "member_id": member["member_id"],
        "available": 0,
        "held": 0,
        "pending": 0,
        "expiring": [],
        "as_of": "2026-11-23T10:00:00Z",
        "tier": {
            "name": "base",
            "qualifying_points": 0,
            "next": {"name": "silver", "points_needed": 5000},
        },
    }


async def test_balance_shows_available_held_pending_and_expiring(
    grocer: OnboardedPartner, member_id: str
) -> None:
    await grocer.client.create_hold(member_id, 300, reference="till-1")
    await grocer.client.earn(member_id, 200, reference="promo", expires_at="2027-01-31T00:00:00Z")
    await grocer.client.earn(
        member_id, 50, reference="order-2", available_at="2026-12-07T10:00:00Z"
    )
    balance = await grocer.client.balance(member_id)
    assert balance.data == {
        "member_id": member_id,
        "available": 400,  # 500 - 300 held + 200
        "held": 300,
        "pending": 50,
        "expiring": [
            {"points": 200, "expires_at": "2027-01-31T00:00:00Z"},
            # the coalition default: 1095 days after posting; pending points included
            {"points": 250, "expires_at": "2029-11-22T10:00:00Z"},
        ],
        "as_of": "2026-11-23T10:00:00Z",
        # pending points are earned points: they qualify (a return would deduct them)
        "tier": {
            "name": "base",
            "qualifying_points": 750,
            "next": {"name": "silver", "points_needed": 4250},
        },
    }


async def test_pending_points_become_available_at_available_at(
    grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    earned = await grocer.client.earn(
        member_id, 50, reference="order-2", available_at="2026-11-30T10:00:00+00:00"
    )
    assert earned["balance_after"] == {"available": 500, "held": 0, "pending": 50}
    error = await refused(grocer.client.burn(member_id, 501))
    assert error.code == "insufficient_points"
    clock.advance(timedelta(days=7))
    assert (await grocer.client.balance(member_id))["available"] == 550


async def test_a_member_of_another_partner_is_member_not_found(
    grocer: OnboardedPartner, cinema: OnboardedPartner, member_id: str
) -> None:
    error = await refused(cinema.client.balance(member_id))
    assert (error.status, error.code) == (404, "member_not_found")
    error = await refused(grocer.client.balance("mem_" + "0" * 32))
    assert (error.status, error.code) == (404, "member_not_found")
    error = await refused(cinema.client.create_session(member_id))
    assert (error.status, error.code) == (404, "member_not_found")
    # Any earn, burn or hold links the member to the partner that posted it.
    await cinema.client.burn(member_id, 10)
    assert (await cinema.client.balance(member_id))["available"] == 490


async def test_earn_for_an_unknown_member_is_member_not_found(
    grocer: OnboardedPartner, engine: AsyncEngine
) -> None:
    before = await snapshot(engine)
    error = await refused(grocer.client.earn("mem_" + "f" * 32, 10, reference="x"))
    assert (error.status, error.code) == (404, "member_not_found")
    assert await snapshot(engine) == before


async def test_a_member_token_reads_its_own_balance_and_history_until_it_expires(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    cinema: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
) -> None:
    await cinema.client.earn(member_id, 30, reference="ticket-1")
    session = await grocer.client.create_session(member_id, ttl_seconds=60)
    assert session.status == 201
    assert session["expires_at"] == "2026-11-23T10:01:00Z"
    bearer = {"Authorization": f"Bearer {session['token']}"}

    balance = await client.get(f"/v1/members/{member_id}/balance", headers=bearer)
    assert balance.status_code == 200
    assert balance.json()["available"] == 530
    history = await client.get(f"/v1/members/{member_id}/transactions", headers=bearer)
    assert history.status_code == 200
    items = history.json()["items"]
    # Across all partners, newest first.
    assert [(item["partner_id"], item["points"]) for item in items] == [
        ("cinema", 30),
        ("grocer", 500),
    ]
    page = await client.get(f"/v1/members/{member_id}/transactions?limit=1", headers=bearer)
    assert [item["points"] for item in page.json()["items"]] == [30]
    rest = await client.get(
        f"/v1/members/{member_id}/transactions",
        params={"limit": 1, "after": page.json()["next"]},
        headers=bearer,
    )
    assert [item["points"] for item in rest.json()["items"]] == [500]
    assert rest.json()["next"] is None

    clock.advance(timedelta(seconds=59))
    assert (await client.get(f"/v1/members/{member_id}/balance", headers=bearer)).status_code == 200
    clock.advance(timedelta(seconds=1))
    expired = await client.get(f"/v1/members/{member_id}/balance", headers=bearer)
    assert_problem(expired, 401, "unauthorized")
    expired = await client.get(f"/v1/members/{member_id}/transactions", headers=bearer)
    assert_problem(expired, 401, "unauthorized")


async def test_a_member_token_is_useless_for_another_member(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str
) -> None:
    other = await grocer.client.enrol_member()
    session = await grocer.client.create_session(other["member_id"])
    bearer = {"Authorization": f"Bearer {session['token']}"}
    response = await client.get(f"/v1/members/{member_id}/balance", headers=bearer)
    assert_problem(response, 404, "member_not_found")
    response = await client.get(f"/v1/members/{member_id}/transactions", headers=bearer)
    assert_problem(response, 404, "member_not_found")


async def test_member_endpoints_refuse_missing_and_unknown_tokens(
    client: httpx.AsyncClient, member_id: str
) -> None:
    response = await client.get(f"/v1/members/{member_id}/transactions")
    assert_problem(response, 401, "unauthorized")
    bearer = {"Authorization": "Bearer xmt_not-a-token"}
    response = await client.get(f"/v1/members/{member_id}/balance", headers=bearer)
    assert_problem(response, 401, "unauthorized")
    basic = {"Authorization": "Basic Zm9vOmJhcg=="}
    response = await client.get(f"/v1/members/{member_id}/balance", headers=basic)
    assert_problem(response, 401, "unauthorized")


async def test_a_member_token_cannot_post(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str
) -> None:
    session = await grocer.client.create_session(member_id)
    response = await client.post(
        "/v1/burn",
        json={"member_id": member_id, "points": 1},
        headers={"Authorization": f"Bearer {session['token']}", "Idempotency-Key": "k"},
    )
    assert_problem(response, 401, "signature_missing")


async def test_session_ttl_is_at_most_an_hour(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    path = f"/v1/members/{member_id}/sessions"
    response = await send(client, grocer, clock, "POST", path, json_body({"ttl_seconds": 3601}))
    assert_problem(response, 422, "validation_error")
    hour = await grocer.client.create_session(member_id, ttl_seconds=3600)
    assert hour["expires_at"] == "2026-11-23T11:00:00Z"
    default = await grocer.client.create_session(member_id)
    assert default["expires_at"] == "2026-11-23T10:15:00Z"


# --- earn ---------------------------------------------------------------------------------------


async def test_earn_returns_the_transaction_object(
    grocer: OnboardedPartner, member_id: str
) -> None:
    earned = await grocer.client.earn(member_id, 120, reference="order-991")
    assert earned.status == 201
    assert earned.replayed is False
    assert earned["transaction_id"].startswith("txn_")
    assert {key: earned[key] for key in earned if key != "transaction_id"} == {
        "type": "earn",
        "partner_id": "grocer",
        "member_id": member_id,
        "points": 120,
        "reference": "order-991",
        "posted_at": "2026-11-23T10:00:00Z",
        "balance_after": {"available": 620, "held": 0, "pending": 0},
        "issue_price": "0.012",  # contract §8 (disputes)
    }
    fetched = await grocer.client.get_transaction(earned["transaction_id"])
    assert fetched["points"] == 120
    assert fetched["balance_after"] == {"available": 620, "held": 0, "pending": 0}


async def test_earn_from_a_purchase_floors_amount_times_rate(
    cinema: OnboardedPartner, grocer: OnboardedPartner, member_id: str
) -> None:
    # cinema earns 2 points per EUR and 1.5 per USD.
    earned = await cinema.client.earn(member_id, purchase=("12.99", "EUR"), reference="t-1")
    assert earned["points"] == 25  # floor(25.98)
    earned = await cinema.client.earn(member_id, purchase=("10.01", "USD"), reference="t-2")
    assert earned["points"] == 15  # floor(15.015)


async def test_a_purchase_in_a_currency_without_a_rate_is_currency_not_supported(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    before = await snapshot(engine)
    error = await refused(grocer.client.earn(member_id, purchase=("10.00", "USD"), reference="x"))
    assert (error.status, error.code) == (422, "currency_not_supported")
    assert await snapshot(engine) == before


@pytest.mark.parametrize("currency", ["THB", "XYZ"])
async def test_a_purchase_in_a_currency_the_exchange_does_not_know_is_currency_not_supported(
    grocer: OnboardedPartner, member_id: str, currency: str
) -> None:
    error = await refused(
        grocer.client.earn(member_id, purchase=("10.00", currency), reference="x")
    )
    assert (error.status, error.code) == (422, "currency_not_supported")


async def test_times_with_any_offset_are_accepted_and_answered_in_utc(
    grocer: OnboardedPartner, member_id: str
) -> None:
    earned = await grocer.client.earn(
        member_id, 10, reference="x", expires_at="2027-01-31T02:00:00+02:00"
    )
    balance = await grocer.client.balance(member_id)
    assert balance["expiring"][0] == {"points": 10, "expires_at": "2027-01-31T00:00:00Z"}
    assert earned["posted_at"] == "2026-11-23T10:00:00Z"
    error = await refused(
        grocer.client.earn(member_id, 10, reference="x", expires_at="2027-01-31T02:00:00")
    )
    assert (error.status, error.code) == (422, "validation_error")


@pytest.mark.parametrize(
    "purchase",
    [
        {"amount": "10.001", "currency": "EUR"},  # more decimals than EUR has
        {"amount": "10.5", "currency": "JPY"},
        {"amount": 10.5, "currency": "EUR"},  # a float is never money
        {"amount": "-1.00", "currency": "EUR"},
        {"amount": "0.00", "currency": "EUR"},
        {"amount": "1e3", "currency": "EUR"},
        {"amount": "10.00", "currency": "eur"},
    ],
)
async def test_malformed_purchases_are_422(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    purchase: dict[str, Any],
) -> None:
    body = json_body({"member_id": member_id, "purchase": purchase, "reference": "x"})
    response = await send(client, grocer, clock, "POST", "/v1/earn", body)
    assert_problem(response, 422, "validation_error")


async def test_earn_needs_points_or_a_purchase(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "reference": "x"})
    response = await send(client, grocer, clock, "POST", "/v1/earn", body)
    assert_problem(response, 422, "validation_error")


async def test_earn_beyond_the_credit_limit_is_credit_limit_exceeded(
    onboard: PartnerFactory, engine: AsyncEngine
) -> None:
    # 0.012 EUR per point; a 1.00 EUR limit allows 83 points (0.996) but not 84 (1.008).
    airline = await onboard("airline", credit_limit={"amount": "1.00", "currency": "EUR"})
    member = await airline.client.enrol_member()
    before = await snapshot(engine)
    error = await refused(airline.client.earn(member["member_id"], 84, reference="x"))
    assert (error.status, error.code) == (422, "credit_limit_exceeded")
    assert await snapshot(engine) == before
    earned = await airline.client.earn(member["member_id"], 83, reference="y")
    assert earned["points"] == 83
    error = await refused(airline.client.earn(member["member_id"], 1, reference="z"))
    assert error.code == "credit_limit_exceeded"


async def test_expires_at_later_than_the_default_ttl_is_422(
    grocer: OnboardedPartner, member_id: str
) -> None:
    error = await refused(
        grocer.client.earn(member_id, 10, reference="x", expires_at="2040-01-01T00:00:00Z")
    )
    assert (error.status, error.code) == (422, "validation_error")
    error = await refused(
        grocer.client.earn(member_id, 10, reference="x", expires_at="2026-11-23T09:00:00Z")
    )
    assert (error.status, error.code) == (422, "validation_error")


# --- burn ---------------------------------------------------------------------------------------


async def test_burn_more_than_available_is_insufficient_points_and_changes_nothing(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    before = await snapshot(engine)
    error = await refused(grocer.client.burn(member_id, 501, reference="basket"))
    assert (error.status, error.code) == (422, "insufficient_points")
    assert await snapshot(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 500
    burned = await grocer.client.burn(member_id, 500, reference="basket")
    assert burned["type"] == "burn"
    assert burned["balance_after"] == {"available": 0, "held": 0, "pending": 0}


async def test_burn_takes_soonest_expiring_points_first(
    grocer: OnboardedPartner, member_id: str
) -> None:
    await grocer.client.earn(member_id, 100, reference="promo", expires_at="2027-01-31T00:00:00Z")
    await grocer.client.burn(member_id, 60)
    balance = await grocer.client.balance(member_id)
    assert balance["expiring"][0] == {"points": 40, "expires_at": "2027-01-31T00:00:00Z"}
    assert balance["available"] == 540


# --- holds --------------------------------------------------------------------------------------


async def test_a_hold_reserves_then_partial_capture_burns_and_releases_the_rest(
    grocer: OnboardedPartner, member_id: str
) -> None:
    hold = await grocer.client.create_hold(member_id, 300, reference="till-1", expires_in=600)
    assert hold.status == 201
    assert hold["status"] == "open"
    assert hold["points"] == 300
    assert hold["expires_at"] == "2026-11-23T10:10:00Z"
    balance = await grocer.client.balance(member_id)
    assert (balance["available"], balance["held"]) == (200, 300)

    captured = await grocer.client.capture_hold(hold["hold_id"], 120)
    assert captured.status == 200
    assert captured["status"] == "captured"
    assert captured["captured_points"] == 120
    burn = await grocer.client.get_transaction(captured["transaction_id"])
    assert (burn["type"], burn["points"]) == ("burn", 120)
    balance = await grocer.client.balance(member_id)
    assert (balance["available"], balance["held"]) == (380, 0)

    error = await refused(grocer.client.capture_hold(hold["hold_id"]))
    assert (error.status, error.code) == (409, "hold_not_open")


async def test_void_releases_a_hold_and_a_voided_hold_cannot_be_captured(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    hold = await grocer.client.create_hold(member_id, 100)
    voided = await grocer.client.void_hold(hold["hold_id"])
    assert voided.status == 200
    assert voided["status"] == "voided"
    before = await snapshot(engine)
    error = await refused(grocer.client.capture_hold(hold["hold_id"]))
    assert (error.status, error.code) == (409, "hold_not_open")
    assert await snapshot(engine) == before
    error = await refused(grocer.client.void_hold(hold["hold_id"]))
    assert (error.status, error.code) == (409, "hold_not_open")
    assert (await grocer.client.balance(member_id))["available"] == 500


async def test_an_open_hold_expires_by_itself(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    hold = await grocer.client.create_hold(member_id, 100)  # default 900 s
    assert hold["expires_at"] == "2026-11-23T10:15:00Z"
    clock.advance(timedelta(seconds=901))
    balance = await grocer.client.balance(member_id)
    assert (balance["available"], balance["held"]) == (500, 0)
    response = await send(client, grocer, clock, "GET", f"/v1/holds/{hold['hold_id']}")
    assert response.json()["status"] == "expired"
    error = await refused(grocer.client.capture_hold(hold["hold_id"]))
    assert (error.status, error.code) == (409, "hold_not_open")


async def test_holding_more_than_available_is_insufficient_points(
    grocer: OnboardedPartner, member_id: str
) -> None:
    await grocer.client.create_hold(member_id, 400)
    error = await refused(grocer.client.create_hold(member_id, 101))
    assert (error.status, error.code) == (422, "insufficient_points")
    error = await refused(grocer.client.burn(member_id, 101))
    assert error.code == "insufficient_points"


@pytest.mark.parametrize("expires_in", [0, 604801, 1.5, "60"])
async def test_hold_expires_in_out_of_range_is_422(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    expires_in: Any,
) -> None:
    body = json_body({"member_id": member_id, "points": 1, "expires_in": expires_in})
    response = await send(client, grocer, clock, "POST", "/v1/holds", body)
    assert_problem(response, 422, "validation_error")


# --- reversals ----------------------------------------------------------------------------------


async def test_partial_reversals_may_not_exceed_the_original(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    earned = await grocer.client.earn(member_id, 100, reference="order-7")
    first = await grocer.client.reverse(earned["transaction_id"], 60, reference="return-1")
    assert first.status == 201
    assert first["type"] == "earn_reversal"
    assert first["reverses"] == earned["transaction_id"]
    assert first["balance_after"]["available"] == 540
    before = await snapshot(engine)
    error = await refused(grocer.client.reverse(earned["transaction_id"], 41))
    assert (error.status, error.code) == (422, "reversal_exceeds_original")
    assert await snapshot(engine) == before
    rest = await grocer.client.reverse(earned["transaction_id"])  # the remaining 40
    assert rest["points"] == 40
    error = await refused(grocer.client.reverse(earned["transaction_id"], 1))
    assert error.code == "reversal_exceeds_original"


async def test_a_reversal_cannot_be_reversed(grocer: OnboardedPartner, member_id: str) -> None:
    burned = await grocer.client.burn(member_id, 100)
    reversal = await grocer.client.reverse(burned["transaction_id"])
    assert reversal["type"] == "burn_reversal"
    assert reversal["balance_after"]["available"] == 500
    error = await refused(grocer.client.reverse(reversal["transaction_id"]))
    assert (error.status, error.code) == (422, "not_reversible")


async def test_an_earn_reversal_after_spending_makes_the_balance_negative(
    grocer: OnboardedPartner, member_id: str
) -> None:
    earned = await grocer.client.earn(member_id, 100, reference="order-8")
    await grocer.client.burn(member_id, 600)
    reversal = await grocer.client.reverse(earned["transaction_id"])
    assert reversal["balance_after"]["available"] == -100
    error = await refused(grocer.client.burn(member_id, 1))
    assert error.code == "insufficient_points"
    topped = await grocer.client.earn(member_id, 150, reference="order-9")
    assert topped["balance_after"]["available"] == 50


# --- authorization between partners -------------------------------------------------------------


async def test_another_partners_transaction_hold_and_member_are_404(
    grocer: OnboardedPartner, cinema: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    earned = await grocer.client.earn(member_id, 10, reference="order-1")
    hold = await grocer.client.create_hold(member_id, 10)
    before = await snapshot(engine)
    error = await refused(cinema.client.get_transaction(earned["transaction_id"]))
    assert error.status == 404
    error = await refused(cinema.client.request("GET", f"/v1/holds/{hold['hold_id']}"))
    assert error.status == 404
    error = await refused(cinema.client.balance(member_id))
    assert (error.status, error.code) == (404, "member_not_found")
    error = await refused(cinema.client.reverse(earned["transaction_id"]))
    assert error.status == 404
    error = await refused(cinema.client.capture_hold(hold["hold_id"]))
    assert error.status == 404
    error = await refused(cinema.client.void_hold(hold["hold_id"]))
    assert error.status == 404
    assert await snapshot(engine) == before
    listed = await cinema.client.list_transactions(member_id=member_id)
    assert listed["items"] == []
    assert (await grocer.client.get_transaction(earned["transaction_id"]))["points"] == 10


async def test_malformed_ids_are_404_not_500(grocer: OnboardedPartner) -> None:
    for call in (
        grocer.client.get_transaction("txn_nope"),
        grocer.client.request("GET", "/v1/holds/hold_nope"),
        grocer.client.reverse("../../admin"),
        grocer.client.capture_hold("hold_" + "0" * 32),
    ):
        assert (await refused(call)).status == 404


# --- transactions -------------------------------------------------------------------------------


async def test_list_transactions_filters_and_paginates_newest_first(
    grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    other = (await grocer.client.enrol_member())["member_id"]
    for number in range(3):
        clock.advance(timedelta(seconds=1))
        await grocer.client.earn(other, 10 + number, reference=f"order-{number}")
    clock.advance(timedelta(seconds=1))
    await grocer.client.burn(member_id, 7, reference="order-1")

    everything = await grocer.client.list_transactions()
    assert [item["points"] for item in everything["items"]] == [7, 12, 11, 10, 500]
    by_member = await grocer.client.list_transactions(member_id=other)
    assert [item["points"] for item in by_member["items"]] == [12, 11, 10]
    by_reference = await grocer.client.list_transactions(reference="order-1")
    assert [item["points"] for item in by_reference["items"]] == [7, 11]
    burns = await grocer.client.list_transactions(type="burn")
    assert [item["type"] for item in burns["items"]] == ["burn"]

    first = await grocer.client.list_transactions(limit=2)
    assert [item["points"] for item in first["items"]] == [7, 12]
    second = await grocer.client.list_transactions(limit=2, after=first["next"])
    assert [item["points"] for item in second["items"]] == [11, 10]
    third = await grocer.client.list_transactions(limit=2, after=second["next"])
    assert [item["points"] for item in third["items"]] == [500]
    assert third["next"] is None


@pytest.mark.parametrize(
    "query",
    ["type=expiry", "type=nonsense", "limit=0", "limit=201", "limit=x", "after=garbage"],
)
async def test_bad_list_parameters_are_422_validation_errors(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, query: str
) -> None:
    headers = sign_headers(grocer, clock, "GET", "/v1/transactions", query=query)
    response = await client.get(url("/v1/transactions", query), headers=headers)
    problem = assert_problem(response, 422, "validation_error")
    assert query.partition("=")[0] in problem["detail"]
    assert "ParamType" not in problem["detail"]


# --- request bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points",
    [b"0", b"-1", b"1.5", b"10000000000000", b'"10"', b"true", b"1e309", b"null", b"1.0"],
)
async def test_absurd_points_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    points: bytes,
) -> None:
    before = await snapshot(engine)
    for path, body in (
        ("/v1/earn", b'{"member_id":"%s","reference":"r","points":%s}'),
        ("/v1/burn", b'{"member_id":"%s","points":%s}'),
        ("/v1/holds", b'{"member_id":"%s","points":%s}'),
    ):
        raw = body % (member_id.encode(), points)
        response = await send(client, grocer, clock, "POST", path, raw)
        problem = assert_problem(response, 422, "validation_error")
        assert "points" in problem["detail"]
    assert await snapshot(engine) == before


async def test_the_largest_allowed_points_value_is_accepted(
    grocer: OnboardedPartner, member_id: str
) -> None:
    earned = await grocer.client.earn(member_id, 10**12, reference="jackpot")
    assert earned["balance_after"]["available"] == 10**12 + 500


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {"points": 5, "reference": "r", "partner_id": "cinema"}),
        ("/v1/burn", {"points": 5, "unit_price": "0"}),
        ("/v1/holds", {"points": 5, "status": "captured"}),
        ("/v1/members", {"reference": "x", "member_id": "mem_chosen"}),
    ],
)
async def test_unknown_fields_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    path: str,
    body: dict[str, Any],
) -> None:
    if path != "/v1/members":
        body = {"member_id": member_id} | body
    before = await snapshot(engine)
    response = await send(client, grocer, clock, "POST", path, json_body(body))
    problem = assert_problem(response, 422, "validation_error")
    assert "unknown field" in problem["detail"].lower()
    assert await snapshot(engine) == before


@pytest.mark.parametrize("reference", ["", "x" * 129, "tab\there", "nul\x00"])
async def test_references_must_be_1_to_128_printable_characters(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    reference: str,
) -> None:
    body = json_body({"member_id": member_id, "points": 1, "reference": reference})
    response = await send(client, grocer, clock, "POST", "/v1/earn", body)
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"points": 1,}', b"\xff\xfe"])
async def test_malformed_json_is_400(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    engine: AsyncEngine,
    body: bytes,
) -> None:
    before = await snapshot(engine)
    response = await send(client, grocer, clock, "POST", "/v1/burn", body)
    assert_problem(response, 400, "bad_request")
    assert await snapshot(engine) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_json_is_415(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    content_type: str,
) -> None:
    body = json_body({"member_id": member_id, "points": 1})
    response = await send(
        client, grocer, clock, "POST", "/v1/burn", body, headers={"Content-Type": content_type}
    )
    assert_problem(response, 415, "unsupported_media_type")


async def test_json_with_a_charset_is_accepted(
    client: httpx.AsyncClient, grocer: OnboardedPartner, member_id: str, clock: FrozenClock
) -> None:
    body = json_body({"member_id": member_id, "points": 1})
    headers = {"Content-Type": "application/json; charset=utf-8"}
    response = await send(client, grocer, clock, "POST", "/v1/burn", body, headers=headers)
    assert response.status_code == 201, response.text


async def test_a_body_over_64_kib_is_413(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    padding = "x" * (64 * 1024)
    body = json_body({"member_id": member_id, "points": 1, "reference": padding})
    assert len(body) > 64 * 1024
    before = await snapshot(engine)
    response = await send(client, grocer, clock, "POST", "/v1/burn", body)
    assert_problem(response, 413, "payload_too_large")
    assert await snapshot(engine) == before


# --- idempotency --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", " ", "x" * 256, "tab\there"],
    ids=["empty", "only-space", "256", "control"],
)
async def test_a_signed_post_with_an_invalid_idempotency_key_is_400(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
    key: str,
) -> None:
    """The signature verifies (it covers the key as sent); the key itself is unusable."""
    body = json_body({"member_id": member_id, "points": 1})
    headers = sign_headers(
        grocer, clock, "POST", "/v1/burn", body=body, headers={"Idempotency-Key": key}
    )
    before = await snapshot(engine)
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
    response = await client.post(url("/v1/burn"), content=body, headers=raw)
    assert_problem(response, 400, "idempotency_key_missing")
    assert await snapshot(engine) == before


async def test_a_post_whose_idempotency_key_is_absent_or_changed_fails_authentication(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """Authentication comes first (contract §2.1 before §2.2): a POST must cover its
    Idempotency-Key, so without one the signature covers too little (401), and a key
    changed after signing (here to a non-ASCII one) breaks the signature (401)."""
    body = json_body({"member_id": member_id, "points": 1})
    before = await snapshot(engine)
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body)
    del headers["Idempotency-Key"]
    response = await client.post(url("/v1/burn"), content=body, headers=headers)
    assert_problem(response, 401, "signature_invalid")
    uncovered = [*REQUIRED_COMPONENTS, *BODY_COMPONENTS]
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body, components=uncovered)
    del headers["Idempotency-Key"]
    response = await client.post(url("/v1/burn"), content=body, headers=headers)
    assert_problem(response, 401, "signature_insufficient")
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body)
    headers["Idempotency-Key"] = "caf\u00e9"
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
    response = await client.post(url("/v1/burn"), content=body, headers=raw)
    assert_problem(response, 401, "signature_invalid")
    assert await snapshot(engine) == before


@pytest.mark.parametrize("key", ["~" * 255, "k", "order 991 / earn"], ids=["255", "1", "spaces"])
async def test_idempotency_keys_of_1_to_255_printable_characters_are_accepted(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    key: str,
) -> None:
    body = json_body({"member_id": member_id, "points": 1})
    headers = {"Idempotency-Key": key}
    response = await send(client, grocer, clock, "POST", "/v1/burn", body, headers=headers)
    assert response.status_code == 201, response.text
    again = await send(client, grocer, clock, "POST", "/v1/burn", body, headers=headers)
    assert again.headers["idempotency-replayed"] == "true"
    assert again.content == response.content


async def test_two_idempotency_key_headers_are_401_signature_invalid(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """The Idempotency-Key is a covered component, and a covered header that appears more
    than once is signature_invalid (contract §2.1); authentication is checked first."""
    body = json_body({"member_id": member_id, "points": 1})
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body)
    lines = [*headers.items(), ("Idempotency-Key", headers["Idempotency-Key"])]
    before = await snapshot(engine)
    response = await client.post(url("/v1/burn"), content=body, headers=lines)
    problem = assert_problem(response, 401, "signature_invalid")
    assert "exactly once" in problem["detail"]
    assert await snapshot(engine) == before


async def test_a_replay_returns_the_original_status_and_body(
    grocer: OnboardedPartner, member_id: str, clock: FrozenClock, engine: AsyncEngine
) -> None:
    first = await grocer.client.burn(member_id, 100, reference="b-1", idempotency_key="burn-1")
    before = await snapshot(engine)
    clock.advance(timedelta(minutes=30))
    again = await grocer.client.burn(member_id, 100, reference="b-1", idempotency_key="burn-1")
    assert again.replayed is True
    assert again.status == 201
    assert again.data == first.data
    assert await snapshot(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 400


async def test_the_same_key_for_a_different_request_is_idempotency_key_reused(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    await grocer.client.burn(member_id, 100, idempotency_key="k-1")
    before = await snapshot(engine)
    for call in (
        grocer.client.burn(member_id, 101, idempotency_key="k-1"),
        grocer.client.earn(member_id, 100, reference="r", idempotency_key="k-1"),
        grocer.client.enrol_member(idempotency_key="k-1"),
        grocer.client.create_session(member_id, idempotency_key="k-1"),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (422, "idempotency_key_reused")
    assert await snapshot(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 400


async def test_idempotency_keys_are_scoped_to_the_partner(
    grocer: OnboardedPartner, cinema: OnboardedPartner, member_id: str
) -> None:
    await grocer.client.burn(member_id, 100, idempotency_key="shared")
    burned = await cinema.client.burn(member_id, 100, idempotency_key="shared")
    assert burned.replayed is False
    assert burned["partner_id"] == "cinema"
    assert burned["balance_after"]["available"] == 300


async def test_a_refused_request_does_not_consume_its_key(
    grocer: OnboardedPartner, member_id: str
) -> None:
    error = await refused(grocer.client.burn(member_id, 600, idempotency_key="big-basket"))
    assert error.code == "insufficient_points"
    await grocer.client.earn(member_id, 100, reference="top-up")
    burned = await grocer.client.burn(member_id, 600, idempotency_key="big-basket")
    assert burned.replayed is False
    assert burned["balance_after"]["available"] == 0


async def test_enrol_and_sessions_are_idempotent_too(
    grocer: OnboardedPartner, member_id: str
) -> None:
    first = await grocer.client.enrol_member(reference="c", idempotency_key="enrol-1")
    again = await grocer.client.enrol_member(reference="c", idempotency_key="enrol-1")
    assert again.replayed
    assert again.data == first.data
    token = await grocer.client.create_session(member_id, idempotency_key="s-1")
    token_again = await grocer.client.create_session(member_id, idempotency_key="s-1")
    assert token_again.replayed
    assert token_again.status == token.status == 201
    # The original status and expiry; the token is a fresh one for the same session,
    # because the exchange never stores a usable token (docs/operations.md, "Security").
    assert token_again["expires_at"] == token["expires_at"]
    assert token_again["token"] != token["token"]


async def test_a_key_held_by_a_request_in_flight_is_request_in_progress(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """While another database transaction holds the key's lock, the request is 409."""
    body = json_body({"member_id": member_id, "points": 5})
    key = {"Idempotency-Key": "in-flight"}
    before = await snapshot(engine)
    async with engine.connect() as conn, conn.begin():
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": "grocer" + chr(31) + "in-flight"},
        )
        for path in ("/v1/burn", "/v1/members"):
            payload = body if path == "/v1/burn" else b"{}"
            response = await send(client, grocer, clock, "POST", path, payload, headers=key)
            assert_problem(response, 409, "request_in_progress")
    assert await snapshot(engine) == before
    response = await send(client, grocer, clock, "POST", "/v1/burn", body, headers=key)
    assert response.status_code == 201


async def test_twenty_parallel_posts_with_one_key_post_once(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    body = json_body({"member_id": member_id, "points": 7, "reference": "parallel"})
    key = {"Idempotency-Key": f"parallel-{uuid.uuid4()}"}
    before, _ = await snapshot(engine)
    requests = [
        sign_headers(grocer, clock, "POST", "/v1/burn", body=body, headers=key) for _ in range(20)
    ]
    responses = await asyncio.gather(
        *(client.post(url("/v1/burn"), content=body, headers=headers) for headers in requests)
    )
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if "idempotency-replayed" not in r.headers]
    replays = [r for r in created if r.headers.get("idempotency-replayed") == "true"]
    in_progress = [r for r in responses if r.status_code == 409]
    assert len(originals) == 1
    assert len(created) == len(originals) + len(replays)
    assert len(created) + len(in_progress) == 20, [r.status_code for r in responses]
    for response in in_progress:
        assert response.json()["code"] == "request_in_progress"
    for response in replays:
        assert response.content == originals[0].content
    after, _ = await snapshot(engine)
    async with engine.connect() as conn:
        burns = await conn.scalar(
            select(func.count()).select_from(postings).where(postings.c.reference == "parallel")
        )
    assert burns == 1
    assert after == before + 1

    replay = await client.post(
        url("/v1/burn"),
        content=body,
        headers=sign_headers(grocer, clock, "POST", "/v1/burn", body=body, headers=key),
    )
    assert replay.status_code == 201
    assert replay.headers["idempotency-replayed"] == "true"
    assert replay.content == originals[0].content
    assert (await grocer.client.balance(member_id))["available"] == 493


# --- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"partner_rate_limit": "3/minute"}], indirect=True)
async def test_a_key_over_its_rate_limit_is_429_with_retry_after(
    grocer: OnboardedPartner, member_id: str, engine: AsyncEngine
) -> None:
    # enrol + earn in the fixture used two of the three requests this minute.
    assert (await grocer.client.balance(member_id))["available"] == 500
    before = await snapshot(engine)
    error = await refused(grocer.client.burn(member_id, 1))
    assert (error.status, error.code) == (429, "rate_limited")
    assert await snapshot(engine) == before
    raw = await refused(grocer.client.request("GET", "/v1/transactions"))
    assert raw.status == 429


@pytest.mark.parametrize("settings", [{"partner_rate_limit": "2/minute"}], indirect=True)
async def test_rate_limited_responses_carry_retry_after(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    statuses = []
    for _ in range(3):
        headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
        response = await client.get(url("/v1/transactions"), headers=headers)
        statuses.append(response.status_code)
    assert statuses == [200, 200, 429]
    assert_problem(response, 429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_a_busy_ledger_is_503_and_a_retry_with_the_same_key_succeeds(
    grocer: OnboardedPartner, member_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger gives up after repeated conflicts; the partner is told when to retry."""
    calls = 0
    original = LedgerService.submit

    async def busy_once(self: LedgerService, requests: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ServiceUnavailable("The ledger is busy; retry the request with the same key.")
        return await original(self, requests)

    monkeypatch.setattr(LedgerService, "submit", busy_once)
    error = await refused(grocer.client.burn(member_id, 5, idempotency_key="busy-1"))
    assert (error.status, error.code) == (503, "service_unavailable")
    assert error.problem["detail"] == "The ledger is busy; retry the request with the same key."
    # A retry (new signature, same key) goes through once the ledger is free.
    burned = await grocer.client.burn(member_id, 5, idempotency_key="busy-1")
    assert burned.status == 201
    assert burned.replayed is False
    assert burned["balance_after"]["available"] == 495


async def test_503_carries_retry_after(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def busy(self: LedgerService, requests: Any) -> Any:
        raise ServiceUnavailable("The ledger is busy; retry the request with the same key.")

    monkeypatch.setattr(LedgerService, "submit", busy)
    body = json_body({"member_id": member_id, "points": 5})
    response = await send(client, grocer, clock, "POST", "/v1/burn", body)
    assert_problem(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "1"


# --- OpenAPI ------------------------------------------------------------------------------------


async def test_the_openapi_document_lists_the_partner_endpoints(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    paths = document["paths"]
    expected = {
        "/v1/members": {"post"},
        "/v1/members/{member_id}/balance": {"get"},
        "/v1/members/{member_id}/sessions": {"post"},
        "/v1/members/{member_id}/transactions": {"get"},
        "/v1/earn": {"post"},
        "/v1/burn": {"post"},
        "/v1/holds": {"post"},
        "/v1/holds/{hold_id}": {"get"},
        "/v1/holds/{hold_id}/capture": {"post"},
        "/v1/holds/{hold_id}/void": {"post"},
        "/v1/transactions": {"get"},
        "/v1/transactions/{transaction_id}": {"get"},
        "/v1/transactions/{transaction_id}/reversals": {"post"},
        "/v1/admin/partners": {"get", "post"},
        "/v1/admin/partners/{partner_id}": {"get", "patch"},
        "/v1/admin/partners/{partner_id}/keys": {"post"},
        "/v1/admin/partners/{partner_id}/keys/{key_id}": {"delete"},
    }
    for path, methods in expected.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
