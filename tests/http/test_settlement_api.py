"""Settlement through the real API: signed partner calls, operator tokens, real PostgreSQL.

The domain's worked example is posted by three partners with their own Ed25519 keys,
settled by an admin, read by finance as JSON and CSV, and each partner reads its own
statement and nothing else.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from exchange.clock import FrozenClock
from partners.errors import PartnerAPIError
from tests.http.conftest import OnboardedPartner, PartnerFactory

PERIOD_END = "2026-11-24T00:00:00Z"
RUN_ID = "stl_20261124T000000Z"


async def worked_example(
    onboard: PartnerFactory, clock: FrozenClock
) -> tuple[OnboardedPartner, OnboardedPartner, OnboardedPartner]:
    """domain.md: issue price 0.012, redemption value 0.010, one period."""
    grocer, fuel, cinema = await onboard("grocer"), await onboard("fuel"), await onboard("cinema")
    shopper = (await grocer.client.enrol_member())["member_id"]
    driver = (await fuel.client.enrol_member())["member_id"]
    await grocer.client.earn(shopper, 1_000_000, reference="basket-1")
    await fuel.client.earn(driver, 400_000, reference="tank-1")
    await grocer.client.burn(shopper, 300_000, reference="basket-2")
    await cinema.client.burn(shopper, 500_000, reference="tickets")  # grocer's points
    await fuel.client.burn(driver, 200_000, reference="tank-2")
    clock.set(datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    return grocer, fuel, cinema


def _money(line: dict[str, object], field: str) -> tuple[object, object]:
    money = line[field]
    assert isinstance(money, dict)
    return money["amount"], money["currency"]


async def test_worked_example_through_the_signed_api(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer, fuel, cinema = await worked_example(onboard, clock)

    created = await client.post(
        "/v1/admin/settlements", json={"period_end": PERIOD_END}, headers=admin_headers
    )

    assert created.status_code == 201, created.text
    run = created.json()
    assert run["run_id"] == RUN_ID
    assert (run["period_start"], run["period_end"]) == ("1970-01-01T00:00:00Z", PERIOD_END)
    assert run["reconciled"] is True
    lines = {line["partner_id"]: line for line in run["lines"]}
    assert [
        (
            partner,
            lines[partner]["issued_points"],
            lines[partner]["redeemed_points"],
            _money(lines[partner], "issuance_charge"),
            _money(lines[partner], "redemption_credit"),
            _money(lines[partner], "net"),
            lines[partner]["direction"],
        )
        for partner in ("grocer", "fuel", "cinema")
    ] == [
        (
            "grocer",
            1_000_000,
            300_000,
            ("12000.00", "EUR"),
            ("3000.00", "EUR"),
            ("9000.00", "EUR"),
            "partner_pays",
        ),
        (
            "fuel",
            400_000,
            200_000,
            ("4800.00", "EUR"),
            ("2000.00", "EUR"),
            ("2800.00", "EUR"),
            "partner_pays",
        ),
        (
            "cinema",
            0,
            500_000,
            ("0.00", "EUR"),
            ("5000.00", "EUR"),
            ("-5000.00", "EUR"),
            "operator_pays",
        ),
    ]
    # The operator receives 6,800: 2,800 margin and 4,000 reserve behind 400,000 points.
    assert sum(Decimal(line["net"]["amount"]) for line in run["lines"]) == Decimal("6800.00")
    assert run["cross_brand"] == [
        {"issuer_id": "fuel", "redeemer_id": "fuel", "points": 200_000},
        {"issuer_id": "grocer", "redeemer_id": "cinema", "points": 500_000},
        {"issuer_id": "grocer", "redeemer_id": "grocer", "points": 300_000},
    ]
    controls = run["controls"]
    assert {key: value for key, value in controls.items() if key != "checks"} == {
        "issued": 1_400_000,
        "redeemed": 1_000_000,
        "expired": 0,
        "reversed": 0,
        "earn_reversed": 0,
        "burn_reversed": 0,
        "outstanding_start": 0,
        "outstanding_end": 400_000,
        "adjusted": 0,
    }
    assert controls["outstanding_end"] - controls["outstanding_start"] == 400_000
    assert set(controls["checks"].values()) == {True}

    # The same period_end again: the same run, 200.
    again = await client.post(
        "/v1/admin/settlements", json={"period_end": "2026-11-24T01:00:00+01:00"},
        headers=admin_headers,
    )  # fmt: skip
    assert again.status_code == 200
    assert again.json() == run

    # Finance reads it, as JSON and in the list.
    fetched = await client.get(f"/v1/settlements/{RUN_ID}", headers=finance_headers)
    assert fetched.status_code == 200
    assert fetched.json() == run
    listed = await client.get("/v1/settlements", headers=finance_headers)
    assert [item["run_id"] for item in listed.json()["items"]] == [RUN_ID]
    assert listed.json()["next"] is None

    # Each partner sees its own line and the flows it takes part in, nothing else.
    statement = await grocer.client.statement(RUN_ID)
    assert statement["partner_id"] == "grocer"
    assert statement["line"] == lines["grocer"]
    assert statement["cross_brand"] == [
        {"issuer_id": "grocer", "redeemer_id": "cinema", "points": 500_000},
        {"issuer_id": "grocer", "redeemer_id": "grocer", "points": 300_000},
    ]
    assert "lines" not in statement
    assert "controls" not in statement
    cinema_statement = await cinema.client.statement(RUN_ID)
    assert cinema_statement["line"]["net"] == {"amount": "-5000.00", "currency": "EUR"}
    assert [flow["issuer_id"] for flow in cinema_statement["cross_brand"]] == ["grocer"]
    fuel_statement = await fuel.client.statement(RUN_ID)
    assert "grocer" not in str(dict(fuel_statement))


async def test_the_csv_report_has_a_header_and_one_row_per_partner(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    await worked_example(onboard, clock)
    await client.post(
        "/v1/admin/settlements", json={"period_end": PERIOD_END}, headers=admin_headers
    )

    response = await client.get(f"/v1/settlements/{RUN_ID}/report.csv", headers=finance_headers)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{RUN_ID}.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "run_id",
        "period_start",
        "period_end",
        "reconciled",
        "partner_id",
        "partner_name",
        "currency",
        "issued_points",
        "redeemed_points",
        "expired_points",
        "earned_points",
        "earn_reversed_points",
        "burned_points",
        "burn_reversed_points",
        "issuance_charge",
        "redemption_credit",
        "net",
        "direction",
        "issuance_charge_exact",
        "redemption_credit_exact",
        "net_exact",
        "expired_value",
        "rounding_difference",
        "final",
    ]
    assert [
        (
            row["partner_id"],
            row["currency"],
            row["issued_points"],
            row["redeemed_points"],
            row["issuance_charge"],
            row["redemption_credit"],
            row["net"],
            row["reconciled"],
        )
        for row in rows
    ] == [
        ("cinema", "EUR", "0", "500000", "0.00", "5000.00", "-5000.00", "true"),
        ("fuel", "EUR", "400000", "200000", "4800.00", "2000.00", "2800.00", "true"),
        ("grocer", "EUR", "1000000", "300000", "12000.00", "3000.00", "9000.00", "true"),
    ]
    assert {(row["run_id"], row["period_end"]) for row in rows} == {(RUN_ID, PERIOD_END)}


async def test_period_closed_future_and_malformed_requests(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 100, reference="o-1")
    clock.set(datetime(2026, 11, 26, 1, 0, tzinfo=UTC))
    later = await client.post(
        "/v1/admin/settlements", json={"period_end": "2026-11-26T00:00:00Z"}, headers=admin_headers
    )
    assert later.status_code == 201

    closed = await client.post(
        "/v1/admin/settlements", json={"period_end": PERIOD_END}, headers=admin_headers
    )
    assert closed.status_code == 409
    assert closed.headers["content-type"] == "application/problem+json"
    assert closed.json()["code"] == "period_closed"
    assert closed.json()["type"] == "https://errors.coalition.example/period_closed"

    future = await client.post(
        "/v1/admin/settlements", json={"period_end": "2026-11-26T02:00:00Z"}, headers=admin_headers
    )
    assert (future.status_code, future.json()["code"]) == (422, "validation_error")
    for body in (
        {"period_end": "2026-11-26T00:00:00"},  # no offset
        {"period_end": "tomorrow"},
        {},
        {"period_end": PERIOD_END, "force": True},  # unknown field
    ):
        bad = await client.post("/v1/admin/settlements", json=body, headers=admin_headers)
        assert bad.status_code == 422, body
    missing = await client.get("/v1/settlements/stl_nope", headers=admin_headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "settlement_not_found")


async def test_who_may_do_what(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    clock.set(datetime(2026, 11, 24, 1, 0, tzinfo=UTC))
    body = {"period_end": PERIOD_END}
    assert (
        await client.post("/v1/admin/settlements", json=body, headers=finance_headers)
    ).status_code == 403
    assert (await client.post("/v1/admin/settlements", json=body)).status_code == 401
    assert (
        await client.post("/v1/admin/settlements", json=body, headers=admin_headers)
    ).status_code == 201
    for path in (
        "/v1/settlements",
        f"/v1/settlements/{RUN_ID}",
        f"/v1/settlements/{RUN_ID}/report.csv",
        "/v1/reports/liabilities",
    ):
        assert (await client.get(path, headers=finance_headers)).status_code == 200, path
        assert (await client.get(path)).status_code == 401, path
    # A partner's signature opens its statement and nothing else of settlement.
    with pytest.raises(PartnerAPIError) as signed:
        await grocer.client.request("GET", "/v1/settlements")
    assert signed.value.status == 401
    unsigned = await client.get(f"/v1/settlements/{RUN_ID}/statement", headers=admin_headers)
    assert unsigned.status_code == 401
    # A partner created after the run has no line in it: 404, as for an unknown run.
    clock.advance(timedelta(hours=1))
    newcomer = await onboard("newcomer")
    with pytest.raises(PartnerAPIError) as missing:
        await newcomer.client.statement(RUN_ID)
    assert (missing.value.status, missing.value.code) == (404, "settlement_not_found")
    with pytest.raises(PartnerAPIError) as unknown:
        await grocer.client.statement("stl_20000101T000000Z")
    assert unknown.value.status == 404


async def test_runs_are_listed_newest_first_a_page_at_a_time(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    await onboard("grocer")
    clock.set(datetime(2026, 11, 27, 1, 0, tzinfo=UTC))
    for day in (24, 25, 26):
        response = await client.post(
            "/v1/admin/settlements",
            json={"period_end": f"2026-11-{day}T00:00:00Z"},
            headers=admin_headers,
        )
        assert response.status_code == 201
    first = (await client.get("/v1/settlements?limit=2", headers=finance_headers)).json()
    assert [item["run_id"] for item in first["items"]] == [
        "stl_20261126T000000Z",
        "stl_20261125T000000Z",
    ]
    second = (
        await client.get(f"/v1/settlements?limit=2&after={first['next']}", headers=finance_headers)
    ).json()
    assert [item["run_id"] for item in second["items"]] == [RUN_ID]
    assert second["next"] is None
    assert second["items"][0]["period_start"] == "1970-01-01T00:00:00Z"


async def test_liabilities_report(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    soon = clock.now() + timedelta(days=20)
    await grocer.client.earn(member, 1000, reference="promo", expires_at=soon)
    await grocer.client.earn(member, 4000, reference="order")
    await grocer.client.burn(member, 300, reference="burn")  # from the promo lot first

    report = (await client.get("/v1/reports/liabilities", headers=finance_headers)).json()

    assert report["as_of"] == "2026-11-23T10:00:00Z"
    [line] = report["partners"]
    assert (line["partner_id"], line["outstanding_points"], line["held_points"]) == (
        "grocer",
        4700,
        0,
    )
    assert line["value"] == {"amount": "56.40", "currency": "EUR"}
    assert line["ageing"] == {
        "within_30_days": {"points": 700, "value": {"amount": "8.40", "currency": "EUR"}},
        "within_90_days": {"points": 0, "value": {"amount": "0.00", "currency": "EUR"}},
        "within_365_days": {"points": 0, "value": {"amount": "0.00", "currency": "EUR"}},
        "later": {"points": 4000, "value": {"amount": "48.00", "currency": "EUR"}},
    }
    assert report["totals"] == [
        {
            "currency": "EUR",
            "outstanding_points": 4700,
            "value": {"amount": "56.40", "currency": "EUR"},
        }
    ]
