"""The liability roll-forward through the API (contract §8), over four daily runs with
earns, burns, holds (one left open on a lot that expires under it), a refund, a return
whose points were spent (clawback from another issuer's lot and into member debt), an
adjustment in each direction and expiry.

For every run and every issuer the test checks, against figures it reads itself:
closing = opening + Σ movements (points and exact values); closing = what that issuer's
lots hold plus what open holds reserve from them, read straight from the lots table at
the cut-off; opening = the previous run's closing; and the totals tie to the run's
controls (issued, reversed, redeemed, expired, adjusted, outstanding).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from tests.http.conftest import OnboardedPartner, PartnerFactory

HOLD_WEEK_S = 604_800
MOVEMENTS = (
    "issued",
    "redeemed",
    "expired",
    "reversed",
    "reversal_shortfall",
    "applied_to_member_debt",
    "adjusted",
)


async def lots_at_cutoff(engine: AsyncEngine) -> dict[str, int]:
    """Per issuer: points its lots hold plus points open holds reserve from them."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT issuer_id, sum(points) AS points FROM ("
                " SELECT issuer_id, remaining AS points FROM lots"
                " UNION ALL"
                " SELECT l.issuer_id, a.points FROM holds h"
                " JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'"
                " JOIN lots l ON l.lot_id = a.lot_id WHERE h.status = 'open') AS o"
                " GROUP BY issuer_id"
            )
        )
        return {row.issuer_id: int(row.points) for row in rows}


async def _settle(
    client: httpx.AsyncClient, clock: FrozenClock, admin: dict[str, str], day: datetime
) -> dict[str, Any]:
    clock.set(day)
    response = await client.post(
        "/v1/admin/settlements", json={"period_end": day.isoformat()}, headers=admin
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    assert run["reconciled"] is True, run["controls"]
    return run


async def _adjust(
    client: httpx.AsyncClient,
    requester: dict[str, str],
    approver: dict[str, str],
    body: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    created = await client.post(
        "/v1/adjustments", json=body, headers=requester | {"Idempotency-Key": key}
    )
    assert created.status_code == 201, created.text
    approved = await client.post(
        f"/v1/adjustments/{created.json()['adjustment_id']}/approval", headers=approver
    )
    assert approved.status_code == 200, approved.text
    result: dict[str, Any] = approved.json()
    return result


def check_roll_forward(
    report: dict[str, Any],
    run: dict[str, Any],
    lots: dict[str, int],
    previous: dict[str, int],
) -> dict[str, int]:
    closing: dict[str, int] = {}
    for issuer in report["issuers"]:
        name = issuer["issuer"]
        moved = [issuer[movement] for movement in MOVEMENTS]
        assert issuer["closing"]["points"] == issuer["opening"]["points"] + sum(
            figure["points"] for figure in moved
        ), name
        assert Decimal(issuer["closing"]["value_exact"]) == Decimal(
            issuer["opening"]["value_exact"]
        ) + sum(Decimal(figure["value_exact"]) for figure in moved), name
        assert issuer["closing"]["points"] == lots.get(name, 0), name
        assert issuer["opening"]["points"] == previous.get(name, 0), name
        closing[name] = issuer["closing"]["points"]
    total = defaultdict(int)
    for issuer in report["issuers"]:
        for movement in MOVEMENTS:
            total[movement] += issuer[movement]["points"]
    controls = run["controls"]
    assert total["issued"] == controls["issued"] + controls["earn_reversed"]
    assert total["reversed"] == -controls["earn_reversed"]
    assert total["redeemed"] == -controls["redeemed"]
    assert total["expired"] == -controls["expired"]
    assert total["adjusted"] == controls["adjusted"]
    tie = report["reconciliation"]
    assert tie["issuers_closing"] - tie["member_debt_closing"] == controls["outstanding_end"]
    assert tie["issuers_opening"] - tie["member_debt_opening"] == controls["outstanding_start"]
    assert (tie["ties_to_run"], tie["movements_tie_to_controls"]) == (True, True)
    return closing


async def _four_days(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin: dict[str, str],
    finance: dict[str, str],
) -> list[tuple[dict[str, Any], dict[str, int]]]:
    grocer: OnboardedPartner = await onboard("grocer")
    fuel: OnboardedPartner = await onboard("fuel", issue_price="0.02")
    cinema: OnboardedPartner = await onboard("cinema")
    m1 = (await grocer.client.enrol_member())["member_id"]
    m2 = (await grocer.client.enrol_member())["member_id"]
    start = clock.now()
    runs: list[tuple[dict[str, Any], dict[str, int]]] = []

    # Day 1: earns, burns, a return of points already spent, a hold.
    await grocer.client.earn(m1, 1000, reference="g1")
    await fuel.client.earn(m1, 500, reference="f1", expires_at=start + timedelta(days=2, hours=2))
    first_burn = await cinema.client.burn(m1, 300, reference="c1")  # from the fuel lot
    g2 = await grocer.client.earn(m2, 200, reference="g2")
    await cinema.client.burn(m2, 150, reference="c2")
    await fuel.client.earn(m2, 100, reference="f2")
    await grocer.client.reverse(g2["transaction_id"])  # 50 from its lot, 100 fuel's, 50 debt
    hold = await cinema.client.create_hold(m1, 100, expires_in=HOLD_WEEK_S)
    day = datetime(2026, 11, 24, tzinfo=UTC)
    runs.append((await _settle(client, clock, admin, day), await lots_at_cutoff(engine)))

    # Day 2: an earn repays the debt, a capture, a refund, adjustments, a long hold.
    clock.set(day + timedelta(hours=9))
    await fuel.client.earn(m2, 80, reference="f3")
    await cinema.client.capture_hold(hold["hold_id"], 60)
    await cinema.client.reverse(first_burn["transaction_id"], 100)
    await _adjust(
        client, finance, admin, {"member_id": m1, "points": 250, "issuer": "operator",
                                 "reason": "goodwill: late delivery"}, "adj-1"
    )  # fmt: skip
    await _adjust(
        client, admin, finance, {"member_id": m2, "points": -20, "issuer": "grocer",
                                 "reason": "duplicate credit"}, "adj-2"
    )  # fmt: skip
    open_hold = await grocer.client.create_hold(m1, 50, expires_in=HOLD_WEEK_S)  # fuel's lot
    day += timedelta(days=1)
    runs.append((await _settle(client, clock, admin, day), await lots_at_cutoff(engine)))

    # Day 3: fuel's promo lot expires at noon with 50 points still held from it.
    day += timedelta(days=1)
    runs.append((await _settle(client, clock, admin, day), await lots_at_cutoff(engine)))

    # Day 4: the hold is voided: its points return to an expired lot and expire at once.
    clock.set(day + timedelta(hours=8))
    await grocer.client.void_hold(open_hold["hold_id"])
    day += timedelta(days=1)
    runs.append((await _settle(client, clock, admin, day), await lots_at_cutoff(engine)))
    return runs


async def test_roll_forward_ties_for_every_issuer_over_four_runs(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    runs = await _four_days(onboard, client, clock, engine, admin_headers, finance_headers)

    previous: dict[str, int] = {}
    reports = []
    for run, lots in runs:
        response = await client.get(
            "/v1/reports/liabilities", params={"as_of": run["period_end"]}, headers=finance_headers
        )
        assert response.status_code == 200, response.text
        report = response.json()
        assert (report["run_id"], report["as_of"]) == (run["run_id"], run["period_end"])
        previous = check_roll_forward(report, run, lots, previous)
        reports.append({issuer["issuer"]: issuer for issuer in report["issuers"]})

    day1, day2, day3, day4 = reports
    # The return of 200 grocer points that had been spent: 50 came back from its own lot,
    # 100 from fuel's lot (fuel's liability fell without a redemption) and 50 became debt.
    assert day1["grocer"]["reversed"]["points"] == -200
    assert day1["grocer"]["reversal_shortfall"]["points"] == 150
    assert day1["fuel"]["applied_to_member_debt"]["points"] == -100
    assert day1["fuel"]["applied_to_member_debt"]["value"] == {"amount": "-2.00", "currency": "EUR"}
    # Day 2: fuel's next earn repaid the 50 points of debt; the operator's goodwill lot.
    assert day2["fuel"]["applied_to_member_debt"]["points"] == -50
    assert day2["operator"]["adjusted"]["points"] == 250
    assert day2["operator"]["closing"]["value"] == {"amount": "2.50", "currency": "EUR"}
    assert "operator" not in day1  # shown once it has issued something
    # Day 3: the promo lot's free points expired; the 50 held from it are still owed.
    assert day3["fuel"]["expired"]["points"] < 0
    assert day3["fuel"]["expired_value"]["amount"] == format(
        Decimal(-day3["fuel"]["expired"]["points"]) * Decimal("0.02"), ".2f"
    )
    # Day 4: the void returned them to the expired lot, and they expired.
    assert day4["fuel"]["expired"]["points"] == -50

    # The same report as CSV, one row per issuer.
    run4 = runs[3][0]
    response = await client.get(
        "/v1/reports/liabilities",
        params={"as_of": run4["period_end"]},
        headers=finance_headers | {"Accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = {row["issuer"]: row for row in csv.DictReader(io.StringIO(response.text))}
    assert rows["fuel"]["expired_points"] == "-50"
    assert rows["fuel"]["closing_points"] == str(day4["fuel"]["closing"]["points"])
    assert {row["ties_to_run"] for row in rows.values()} == {"true"}

    # Run lines carry breakage in money too.
    lines = {line["partner_id"]: line for line in runs[2][0]["lines"]}
    assert lines["fuel"]["expired_value"] == day3["fuel"]["expired_value"]


async def test_as_of_must_be_a_runs_period_end(
    client: httpx.AsyncClient,
    clock: FrozenClock,
    onboard: PartnerFactory,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    grocer = await onboard("grocer")
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 100, reference="o-1")
    await _settle(client, clock, admin_headers, datetime(2026, 11, 24, tzinfo=UTC))

    not_a_cutoff = await client.get(
        "/v1/reports/liabilities",
        params={"as_of": "2026-11-23T12:00:00Z"},
        headers=finance_headers,
    )
    garbage = await client.get(
        "/v1/reports/liabilities", params={"as_of": "yesterday"}, headers=finance_headers
    )
    offset = await client.get(
        "/v1/reports/liabilities",
        params={"as_of": "2026-11-24T02:00:00+02:00"},
        headers=finance_headers,
    )
    unauthenticated = await client.get(
        "/v1/reports/liabilities", params={"as_of": "2026-11-24T00:00:00Z"}
    )

    assert (not_a_cutoff.status_code, not_a_cutoff.json()["code"]) == (
        422,
        "as_of_not_a_period_end",
    )
    assert not_a_cutoff.headers["content-type"].startswith("application/problem+json")
    assert (garbage.status_code, garbage.json()["code"]) == (422, "validation_error")
    assert offset.status_code == 200  # the same instant, written with an offset
    assert offset.json()["issuers"][0]["closing"]["points"] == 100
    assert unauthenticated.status_code == 401
    # Without as_of: the v1 report (plus its reconciling items).
    now = (await client.get("/v1/reports/liabilities", headers=finance_headers)).json()
    assert set(now) == {"as_of", "partners", "totals", "reconciliation"}
    assert now["partners"][0]["outstanding_points"] == 100


async def test_the_liabilities_report_reconciles_to_member_accounts(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    finance_headers: dict[str, str],
) -> None:
    """Points held from a lot past expiry, points past expiry not yet swept, and negative
    balances are the reconciling items between issuers' liability and members' accounts."""
    grocer = await onboard("grocer")
    holder, debtor, sleeper = [(await grocer.client.enrol_member())["member_id"] for _ in "abc"]
    tomorrow = clock.now() + timedelta(days=1)
    await grocer.client.earn(holder, 100, reference="promo", expires_at=tomorrow)
    await grocer.client.earn(holder, 100, reference="regular")
    await grocer.client.create_hold(holder, 150, expires_in=HOLD_WEEK_S)  # promo 100 + 50
    spent = await grocer.client.earn(debtor, 50, reference="returned")
    await grocer.client.burn(debtor, 50)
    await grocer.client.reverse(spent["transaction_id"])  # debtor owes 50
    await grocer.client.earn(sleeper, 30, reference="sleeper", expires_at=tomorrow)
    clock.advance(timedelta(days=2))  # promo lots expired; no sweep has run

    report = (await client.get("/v1/reports/liabilities", headers=finance_headers)).json()

    [line] = report["partners"]
    assert (line["outstanding_points"], line["held_points"]) == (100, 50)
    assert report["reconciliation"] == {
        "outstanding_points": 100,
        "expired_not_yet_swept": 30,
        "held_on_expired_lots": 100,
        "member_debt": 50,
        "member_accounts": 180,
        "ties": True,
    }
