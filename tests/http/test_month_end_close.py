"""Issue 12, done when: a month closed end to end through the API, as finance does it.

Five partners trade through November and December 2026 with their own Ed25519 keys;
November is settled and approved (the opening balances); in December members earn,
spend across brands, a hold is captured for less, a burn is refunded in part, an earn is
returned, a promotion expires, finance asks for a goodwill adjustment that only a second
operator can post, and the bakery leaves the coalition. On 2 January 2027 finance closes
December: computes and approves the run (numbered documents), reads an invoice's PDF,
records a partial then a full payment, ages the receivables at a later date, checks the
liability roll-forward for every issuer against the figures below and balances the
journal. The clock is the frozen test clock, moved step by step; nothing here reads the
database's clock.

Prices (per point): grocer and cinema issue at 0.012, fuel at 0.02, bakery at 0.015;
every partner redeems at 0.010. The diner settles in USD (issue 0.012 USD, redeem
0.010 USD), so the run, the documents and the journal have two currencies. Lots expire
soonest first, so a burn draws on a member's oldest regular lot unless a promotion
expires sooner.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from partners.errors import PartnerAPIError
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.test_finance_api import (
    PAYMENTS,
    approve_run,
    fetch_documents,
    fetch_receivables,
    journal_balances,
    keyed,
    payment_body,
    pdf_text,
)
from tests.http.test_rollforward_api import check_roll_forward, lots_at_cutoff

NOVEMBER_END = "2026-12-01T00:00:00Z"
DECEMBER_END = "2027-01-01T00:00:00Z"
DECEMBER_RUN = "stl_20270101T000000Z"
HOLD_DAY_S = 86_400
FIGURES = ("opening", "issued", "reversed", "redeemed", "expired", "adjusted", "closing")


def _at(month: int, day: int, hour: int = 10, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


async def _settle(
    client: httpx.AsyncClient, clock: FrozenClock, admin: dict[str, str], period_end: str
) -> dict[str, Any]:
    """Compute the run the scheduler would have computed a few minutes after midnight."""
    clock.set(datetime.fromisoformat(period_end) + timedelta(minutes=5))
    response = await client.post(
        "/v1/admin/settlements", json={"period_end": period_end}, headers=admin
    )
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    assert (run["status"], run["reconciled"]) == ("computed", True), run["controls"]
    return run


def _amounts(line: dict[str, Any]) -> tuple[int, int, str, str, str]:
    return (
        line["issued_points"],
        line["redeemed_points"],
        line["issuance_charge"]["amount"],
        line["redemption_credit"]["amount"],
        line["net"]["amount"],
    )


async def _november(partners: dict[str, OnboardedPartner], clock: FrozenClock) -> dict[str, str]:
    """The members, and the balances December opens with: grocer 10,000, fuel 5,000."""
    grocer, fuel, bakery = partners["grocer"], partners["fuel"], partners["bakery"]
    members = {
        "ann": (await grocer.client.enrol_member())["member_id"],
        "ben": (await fuel.client.enrol_member())["member_id"],
        "cat": (await bakery.client.enrol_member())["member_id"],
        "dan": (await fuel.client.enrol_member())["member_id"],
        "eve": (await partners["diner"].client.enrol_member())["member_id"],
    }
    await grocer.client.earn(members["ann"], 10_000, reference="nov-basket")
    await fuel.client.earn(members["ben"], 5_000, reference="nov-tank")
    return members


async def _december_trading(
    partners: dict[str, OnboardedPartner], members: dict[str, str], clock: FrozenClock
) -> None:
    """Earns, burns across brands, a hold captured for less, a refund, a return, a promo."""
    grocer, fuel, cinema = partners["grocer"], partners["fuel"], partners["cinema"]
    bakery = partners["bakery"]
    ann, ben, cat, dan = (members[name] for name in ("ann", "ben", "cat", "dan"))
    clock.set(_at(12, 2))
    await grocer.client.earn(ann, 2_000, reference="dec-basket")
    clock.set(_at(12, 3))
    tickets = await cinema.client.burn(ann, 3_000, reference="tickets")  # grocer's Nov lot
    clock.set(_at(12, 4))
    await bakery.client.earn(cat, 800, reference="bread")
    clock.set(_at(12, 5))
    await fuel.client.burn(ben, 1_000, reference="fuel-reward")
    await bakery.client.burn(cat, 300, reference="cake")
    clock.set(_at(12, 6))
    await grocer.client.burn(ben, 500, reference="fuel-points-at-grocer")
    clock.set(_at(12, 7))
    hold = await cinema.client.create_hold(ann, 1_500, reference="seats", expires_in=HOLD_DAY_S)
    clock.set(_at(12, 7, hour=20))
    captured = await cinema.client.capture_hold(hold["hold_id"], 1_000)  # 500 released
    assert captured["status"] == "captured"
    clock.set(_at(12, 9))
    refund = await cinema.client.reverse(tickets["transaction_id"], 400, reference="seat-refund")
    assert (refund["type"], refund["points"]) == ("burn_reversal", 400)
    clock.set(_at(12, 10))
    await fuel.client.earn(dan, 600, reference="promo", expires_at=_at(12, 20, hour=12))
    clock.set(_at(12, 14))
    returned = await grocer.client.earn(ann, 250, reference="returned-order")
    clock.set(_at(12, 15))
    await grocer.client.reverse(returned["transaction_id"], reference="order-returned")
    clock.set(_at(12, 21))
    diner = partners["diner"]
    await diner.client.earn(members["eve"], 1_000, reference="dinner")
    await diner.client.burn(ann, 500, reference="grocer-points-for-dinner")  # EUR-issued points


async def _goodwill_with_four_eyes(
    client: httpx.AsyncClient,
    clock: FrozenClock,
    member: str,
    finance: dict[str, str],
    admin: dict[str, str],
) -> dict[str, Any]:
    """Finance asks for 300 goodwill points; it cannot approve its own request."""
    clock.set(_at(12, 16))
    body = {"member_id": member, "points": 300, "issuer": "operator", "reason": "parcel lost"}
    requested = await client.post(
        "/v1/adjustments", json=body, headers=finance | {"Idempotency-Key": "ticket-4711"}
    )
    assert requested.status_code == 201, requested.text
    assert requested.json()["status"] == "pending"
    approval = f"/v1/adjustments/{requested.json()['adjustment_id']}/approval"
    own = await client.post(approval, headers=finance)
    assert (own.status_code, own.json()["code"]) == (403, "four_eyes_required")
    clock.set(_at(12, 17))
    approved = await client.post(approval, headers=admin)
    assert approved.status_code == 200, approved.text
    posted: dict[str, Any] = approved.json()
    assert (posted["status"], posted["requested_by"], posted["approved_by"]) == (
        "posted",
        "test-finance",
        "test-admin",
    )
    return posted


async def _bakery_leaves(
    client: httpx.AsyncClient,
    clock: FrozenClock,
    partners: dict[str, OnboardedPartner],
    members: dict[str, str],
    admin: dict[str, str],
    finance: dict[str, str],
) -> None:
    """Terminated on 18 December: refused from then on; its points stay spendable."""
    bakery, grocer = partners["bakery"], partners["grocer"]
    clock.set(_at(12, 18))
    left = await client.patch(
        "/v1/admin/partners/bakery", json={"status": "terminated"}, headers=admin
    )
    assert (left.status_code, left.json()["status"]) == (200, "terminated")
    with pytest.raises(PartnerAPIError) as refused:
        await bakery.client.earn(members["cat"], 10, reference="after-leaving")
    assert (refused.value.status, refused.value.code) == (403, "partner_terminated")
    in_its_name = await client.post(
        "/v1/adjustments",
        json={"member_id": members["cat"], "points": 5, "issuer": "bakery", "reason": "late"},
        headers=finance | {"Idempotency-Key": "bakery-goodwill"},
    )
    assert in_its_name.status_code == 422, in_its_name.text
    clock.set(_at(12, 19))
    await grocer.client.burn(members["cat"], 200, reference="bakery-points-at-grocer")


def _check_run(run: dict[str, Any]) -> None:
    """December's lines, cross-brand flows and controls, from the story above."""
    assert (run["run_id"], run["period_start"], run["period_end"]) == (
        DECEMBER_RUN,
        NOVEMBER_END,
        DECEMBER_END,
    )
    lines = {line["partner_id"]: line for line in run["lines"]}
    assert _amounts(lines["grocer"]) == (2_000, 700, "24.00", "7.00", "17.00")
    assert _amounts(lines["fuel"]) == (600, 1_000, "12.00", "10.00", "2.00")
    assert _amounts(lines["cinema"]) == (0, 3_600, "0.00", "36.00", "-36.00")
    assert _amounts(lines["bakery"]) == (800, 300, "12.00", "3.00", "9.00")
    assert _amounts(lines["diner"]) == (1_000, 500, "12.00", "5.00", "7.00")
    assert lines["diner"]["net"]["currency"] == "USD"
    assert {partner: line["final"] for partner, line in lines.items()} == {
        "grocer": False,
        "fuel": False,
        "cinema": False,
        "bakery": True,  # terminated in this period: its last regular settlement
        "diner": False,
    }
    assert (lines["fuel"]["expired_points"], lines["fuel"]["expired_value"]["amount"]) == (
        600,
        "12.00",
    )
    assert sorted(
        (flow["issuer_id"], flow["redeemer_id"], flow["points"]) for flow in run["cross_brand"]
    ) == [
        ("bakery", "bakery", 300),
        ("bakery", "grocer", 200),
        ("fuel", "fuel", 1_000),
        ("fuel", "grocer", 500),
        ("grocer", "cinema", 3_600),
        ("grocer", "diner", 500),
    ]
    controls = run["controls"]
    assert (controls["outstanding_start"], controls["outstanding_end"]) == (15_000, 13_000)
    assert (controls["issued"], controls["earn_reversed"]) == (4_400, 250)
    assert (controls["redeemed"], controls["expired"], controls["adjusted"]) == (6_100, 600, 300)


async def _approve_and_read_documents(
    client: httpx.AsyncClient,
    clock: FrozenClock,
    partners: dict[str, OnboardedPartner],
    finance: dict[str, str],
    admin: dict[str, str],
) -> dict[str, Any]:
    clock.set(_at(1, 2, hour=9, year=2027))
    approved = await approve_run(client, finance, DECEMBER_RUN)
    assert (approved["status"], approved["approved_by"]) == ("approved", "finance:test-finance")
    clock.advance(timedelta(hours=1))
    assert await approve_run(client, admin, DECEMBER_RUN) == approved  # nothing issued twice
    documents = await fetch_documents(client, finance, DECEMBER_RUN)
    # Numbered per series and year of issue, gap-free: CN first, then INV, partner by partner.
    numbered = {p: (d["number"], d["type"], d["total"]["amount"]) for p, d in documents.items()}
    assert documents["diner"]["total"] == {"amount": "7.00", "currency": "USD"}
    assert numbered == {
        "cinema": ("CN-2027-000001", "credit_note", "36.00"),
        "bakery": ("INV-2027-000001", "invoice", "9.00"),
        "diner": ("INV-2027-000002", "invoice", "7.00"),  # in USD: one series for all
        "fuel": ("INV-2027-000003", "invoice", "2.00"),
        "grocer": ("INV-2027-000004", "invoice", "17.00"),
    }  # fmt: skip
    invoice = documents["grocer"]
    assert (invoice["issue_date"], invoice["due_date"]) == ("2027-01-02", "2027-01-16")
    assert (invoice["period_start"], invoice["period_end"]) == (NOVEMBER_END, DECEMBER_END)
    pdf = await partners["grocer"].client.request(
        "GET", f"/v1/documents/{invoice['document_id']}.pdf"
    )
    assert pdf.headers["content-type"] == "application/pdf"
    printed = pdf_text(pdf.content)
    for expected in (
        "INVOICE",
        "INV-2027-000004",
        "Grocer",
        "24.00 EUR",
        "17.00 EUR",
        "2027-01-16",
    ):
        assert expected in printed, expected
    return documents


async def _payments(
    client: httpx.AsyncClient, documents: dict[str, Any], finance: dict[str, str]
) -> None:
    """The grocer pays its 17.00 in two parts: 10.00 on 10 January, the rest on the 20th."""
    invoice = documents["grocer"]["document_id"]
    part = payment_body("grocer", "10.00", document_id=invoice, value_date="2027-01-10")
    first = await client.post(PAYMENTS, json=part, headers=keyed(finance, "SEPA-2027-01-10-0042"))
    assert first.status_code == 201, first.text
    assert first.json()["allocations"][0]["amount"]["amount"] == "10.00"
    half_paid = await client.get(f"/v1/documents/{invoice}", headers=finance)
    assert (half_paid.json()["status"], half_paid.json()["amount_open"]["amount"]) == (
        "open",
        "7.00",
    )
    rest = payment_body("grocer", "7.00", document_id=invoice, value_date="2027-01-20")
    second = await client.post(PAYMENTS, json=rest, headers=keyed(finance, "SEPA-2027-01-20-0107"))
    assert second.status_code == 201, second.text
    assert second.json()["unapplied"]["amount"] == "0.00"
    too_much = payment_body("grocer", "0.01", document_id=invoice, value_date="2027-01-21")
    over = await client.post(PAYMENTS, json=too_much, headers=keyed(finance, "dec-grocer-3"))
    assert (over.status_code, over.json()["code"]) == (422, "overpayment")
    paid = await client.get(f"/v1/documents/{invoice}", headers=finance)
    assert (paid.json()["status"], paid.json()["amount_open"]["amount"]) == ("paid", "0.00")


async def _bakery_settles_its_final_invoice(
    client: httpx.AsyncClient,
    partners: dict[str, OnboardedPartner],
    documents: dict[str, Any],
    finance: dict[str, str],
) -> None:
    """Gone from the API, the bakery still pays: finance records it and reads its PDF."""
    invoice = documents["bakery"]
    with pytest.raises(PartnerAPIError) as refused:
        await partners["bakery"].client.request(
            "GET", f"/v1/documents/{invoice['document_id']}.pdf"
        )
    assert (refused.value.status, refused.value.code) == (403, "partner_terminated")
    pdf = await client.get(f"/v1/documents/{invoice['document_id']}.pdf", headers=finance)
    assert "INV-2027-000001" in pdf_text(pdf.content)
    final = payment_body("bakery", "9.00", value_date="2027-01-25")  # oldest open invoice first
    paid = await client.post(PAYMENTS, json=final, headers=keyed(finance, "SEPA-2027-01-25-0003"))
    assert paid.status_code == 201, paid.text
    assert [a["number"] for a in paid.json()["allocations"]] == ["INV-2027-000001"]


async def _ageing(
    client: httpx.AsyncClient, documents: dict[str, Any], finance: dict[str, str]
) -> None:
    between = await fetch_receivables(client, finance, "2027-01-15")
    [grocer_open] = [
        d for d in between["grocer"]["documents"] if d["number"].startswith("INV-2027")
    ]
    assert (
        grocer_open["amount_open"]["amount"],
        grocer_open["days_past_due"],
        grocer_open["bucket"],
    ) == ("7.00", -1, "not_due")

    # 15 February: the grocer's and the bakery's December invoices are paid; November's
    # (issued 1 December, due the 15th, never paid) are 62 days past due; December's other
    # documents are 30 days past due.
    later = await fetch_receivables(client, finance, "2027-02-15")
    aged = {
        (partner, d["number"]): (d["amount_open"]["amount"], d["days_past_due"], d["bucket"])
        for partner, report in later.items()
        for d in report["documents"]
    }
    assert aged == {
        ("cinema", "CN-2027-000001"): ("36.00", 30, "1_30"),  # the operator owes this one
        ("fuel", "INV-2026-000001"): ("100.00", 62, "61_90"),
        ("diner", "INV-2027-000002"): ("7.00", 30, "1_30"),
        ("fuel", "INV-2027-000003"): ("2.00", 30, "1_30"),
        ("grocer", "INV-2026-000002"): ("120.00", 62, "61_90"),
    }
    assert later["cinema"]["payables"]["1_30"]["amount"] == "36.00"
    assert later["grocer"]["totals"]["total"]["amount"] == "120.00"
    assert later["diner"]["totals"]["1_30"] == {"amount": "7.00", "currency": "USD"}
    assert "bakery" not in later  # its final invoice paid, nothing left over


def _check_issuers(report: dict[str, Any]) -> None:
    """Each issuer's movements over December, in points and in money at issue prices."""
    issuers = {issuer["issuer"]: issuer for issuer in report["issuers"]}
    assert sorted(issuers) == ["bakery", "cinema", "diner", "fuel", "grocer", "operator"]
    figures = {
        name: {field: issuer[field]["points"] for field in FIGURES if issuer[field]["points"]}
        for name, issuer in issuers.items()
    }
    assert figures == {
        "grocer": {
            "opening": 10_000,
            "issued": 2_250,
            "reversed": -250,
            "redeemed": -4_100,  # cinema 3,000 + 1,000 captured - 400 refunded; diner 500
            "closing": 7_900,
        },
        "fuel": {
            "opening": 5_000,
            "issued": 600,
            "redeemed": -1_500,
            "expired": -600,
            "closing": 3_500,
        },
        "bakery": {"issued": 800, "redeemed": -500, "closing": 300},
        "cinema": {},  # it only redeems: it owes no points
        "diner": {"issued": 1_000, "closing": 1_000},
        "operator": {"adjusted": 300, "closing": 300},
    }
    closing_values = {
        name: issuer["closing"]["value"]["amount"] for name, issuer in issuers.items()
    }
    assert closing_values == {
        "grocer": "94.80",
        "fuel": "70.00",
        "bakery": "4.50",
        "cinema": "0.00",
        "diner": "12.00",
        "operator": "3.00",
    }
    assert issuers["fuel"]["expired_value"]["amount"] == "12.00"
    assert issuers["diner"]["closing"]["value"]["currency"] == "USD"


async def _roll_forward(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    run: dict[str, Any],
    november_closing: dict[str, int],
    finance: dict[str, str],
) -> None:
    response = await client.get(
        "/v1/reports/liabilities", params={"as_of": DECEMBER_END}, headers=finance
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["run_id"], report["as_of"]) == (DECEMBER_RUN, DECEMBER_END)
    # closing = opening + movements for every issuer; closing = its lots at the cut-off;
    # opening = November's closing; the totals tie to the run's controls.
    check_roll_forward(report, run, await lots_at_cutoff(engine), november_closing)
    _check_issuers(report)


def _check_journal(journal: dict[str, Any]) -> None:
    assert journal["status"] == "approved"
    assert [(t["currency"], t["balanced"]) for t in journal["totals"]] == [
        ("EUR", True),
        ("USD", True),
    ]
    for total in journal["totals"]:
        assert total["debit"] == total["credit"], total
    for entry in journal["entries"]:
        debit = sum(Decimal(line["debit"]) for line in entry["lines"])
        assert debit == sum(Decimal(line["credit"]) for line in entry["lines"]), entry
    balances = journal_balances(journal)
    # After netting, each partner's receivable or payable is its document's total.
    assert balances[("1200", "grocer")] == Decimal("17.00")
    assert balances[("1200", "fuel")] == Decimal("2.00")
    assert balances[("1200", "bakery")] == Decimal("9.00")
    assert balances[("1200", "diner")] == Decimal("7.00")  # USD
    assert balances[("2100", "cinema")] == Decimal("-36.00")
    assert balances[("4200", None)] == Decimal("-12.00")  # fuel's expired promo, 600 x 0.02


async def test_finance_closes_december_end_to_end(
    onboard: PartnerFactory,
    client: httpx.AsyncClient,
    clock: FrozenClock,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    partners = {
        "grocer": await onboard("grocer"),
        "fuel": await onboard("fuel", issue_price="0.02"),
        "cinema": await onboard("cinema"),
        "bakery": await onboard("bakery", issue_price="0.015"),
        "diner": await onboard("diner", settlement_currency="USD", earn_rates={"USD": "1"}),
    }
    members = await _november(partners, clock)
    november = await _settle(client, clock, admin_headers, NOVEMBER_END)
    await approve_run(client, finance_headers, november["run_id"])  # INV-2026-000001, -000002
    november_closing = {"grocer": 10_000, "fuel": 5_000}

    await _december_trading(partners, members, clock)
    await _goodwill_with_four_eyes(client, clock, members["ben"], finance_headers, admin_headers)
    await _bakery_leaves(client, clock, partners, members, admin_headers, finance_headers)
    run = await _settle(client, clock, admin_headers, DECEMBER_END)
    _check_run(run)
    # What members see adds up to the run's 13,000 points (dan's promotion expired).
    seen_by = {"ann": "grocer", "ben": "fuel", "cat": "grocer", "dan": "fuel", "eve": "diner"}
    balances = {
        name: (await partners[partner].client.balance(members[name]))["available"]
        for name, partner in seen_by.items()
    }
    assert balances == {"ann": 7_900, "ben": 3_800, "cat": 300, "dan": 0, "eve": 1_000}

    documents = await _approve_and_read_documents(
        client, clock, partners, finance_headers, admin_headers
    )
    await _payments(client, documents, finance_headers)
    await _bakery_settles_its_final_invoice(client, partners, documents, finance_headers)
    await _ageing(client, documents, finance_headers)
    await _roll_forward(client, engine, run, november_closing, finance_headers)
    journal = await client.get(f"/v1/settlements/{DECEMBER_RUN}/journal", headers=finance_headers)
    assert journal.status_code == 200, journal.text
    _check_journal(journal.json())
    statement = await partners["cinema"].client.statement(DECEMBER_RUN)
    assert (statement["status"], statement["line"]["direction"]) == ("approved", "operator_pays")
