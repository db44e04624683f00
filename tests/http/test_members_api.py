"""Members v1.1 over HTTP (contract §11): tiers, transfers, data export and erasure.

Every rule is driven through the real app on real PostgreSQL, as a partner's app would:
partners sign, members carry the token their partner obtained, operators their bearer.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.members._store import EXPORT_SECTIONS
from exchange.tables import REQUEST_COLUMNS
from partners.errors import PartnerAPIError
from settlement.engine import Period, settle
from settlement.store import read_period
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.support import assert_ledger_verifies


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small transfer limits, so that tests reach them with few postings."""
    return settings.with_changes(transfer_points_max=1_000, transfer_points_30d_max=1_500)


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


@pytest.fixture
async def cinema(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("cinema")


async def _member(partner: OnboardedPartner, points: int = 0, reference: str = "card") -> str:
    member_id: str = (await partner.client.enrol_member(reference=reference))["member_id"]
    if points:
        await partner.client.earn(member_id, points, reference=f"welcome-{member_id[-6:]}")
    return member_id


async def _bearer(partner: OnboardedPartner, member_id: str) -> dict[str, str]:
    session = await partner.client.create_session(member_id, ttl_seconds=3600)
    return {"Authorization": f"Bearer {session['token']}"}


async def _transfer(
    client: httpx.AsyncClient,
    bearer: dict[str, str],
    member_id: str,
    to_member_id: str,
    points: Any,
    key: str,
) -> httpx.Response:
    return await client.post(
        f"/v1/members/{member_id}/transfers",
        json={"to_member_id": to_member_id, "points": points},
        headers=bearer | {"Idempotency-Key": key},
    )


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


# -- tiers ---------------------------------------------------------------------------------------


async def test_tier_follows_trailing_365_days_of_earns_net_of_reversals(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer, 4_000)
    bearer = await _bearer(grocer, member_id)

    async def tiers() -> tuple[dict[str, Any], dict[str, Any]]:
        signed = (await grocer.client.balance(member_id))["tier"]
        own = (await client.get(f"/v1/members/{member_id}/balance", headers=bearer)).json()
        return signed, own["tier"]

    base = {"name": "base", "qualifying_points": 4_000,
            "next": {"name": "silver", "points_needed": 1_000}}  # fmt: skip
    assert await tiers() == (base, base)

    clock.advance(timedelta(days=200))
    bonus = await grocer.client.earn(member_id, 1_500, reference="bonus")
    silver = {"name": "silver", "qualifying_points": 5_500,
              "next": {"name": "gold", "points_needed": 14_500}}  # fmt: skip
    bearer = await _bearer(grocer, member_id)
    assert await tiers() == (silver, silver)

    # A return of part of the bonus takes its points out of the qualifying total.
    await grocer.client.reverse(bonus["transaction_id"], 600)
    assert (await tiers())[0]["name"] == "base"
    assert (await tiers())[0]["qualifying_points"] == 4_900

    # 366 days after the first earn it no longer qualifies; the bonus (net 900) still does.
    clock.advance(timedelta(days=166))
    bearer = await _bearer(grocer, member_id)
    assert await tiers() == (
        {"name": "base", "qualifying_points": 900,
         "next": {"name": "silver", "points_needed": 4_100}},
    ) * 2  # fmt: skip


async def test_gold_has_no_next_tier_and_transfers_never_qualify(
    client: httpx.AsyncClient, grocer: OnboardedPartner
) -> None:
    rich = await _member(grocer, 20_000)
    other = await _member(grocer)
    assert (await grocer.client.balance(rich))["tier"] == {
        "name": "gold",
        "qualifying_points": 20_000,
    }
    bearer = await _bearer(grocer, rich)
    sent = await _transfer(client, bearer, rich, other, 900, "t-1")
    assert sent.status_code == 201, sent.text
    assert (await grocer.client.balance(other))["tier"]["qualifying_points"] == 0
    assert (await grocer.client.balance(rich))["tier"]["qualifying_points"] == 20_000


async def test_tier_multipliers_apply_to_purchase_earns_only(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    admin_headers: dict[str, str],
) -> None:
    changed = await client.patch(
        "/v1/admin/partners/grocer",
        json={"tier_multipliers": {"gold": "1.5", "silver": "1.25"}},
        headers=admin_headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["tier_multipliers"] == {"gold": "1.5", "silver": "1.25"}
    unknown = await client.patch(
        "/v1/admin/partners/grocer", json={"tier_multipliers": {"platinum": "2"}},
        headers=admin_headers,
    )  # fmt: skip
    _problem(unknown, 422, "validation_error")
    negative = await client.patch(
        "/v1/admin/partners/grocer", json={"tier_multipliers": {"gold": "-1"}},
        headers=admin_headers,
    )  # fmt: skip
    assert negative.status_code == 422

    gold = await _member(grocer, 20_000)
    base = await _member(grocer)
    # floor(101.99 x 1) = 101 points, then floor(101 x 1.5) = 151 for gold.
    earned = await grocer.client.earn(gold, purchase=("101.99", "EUR"), reference="o-1")
    assert earned["points"] == 151
    plain = await grocer.client.earn(base, purchase=("101.99", "EUR"), reference="o-2")
    assert plain["points"] == 101
    # Explicit points are the partner's own computation: no multiplier.
    explicit = await grocer.client.earn(gold, 100, reference="o-3")
    assert explicit["points"] == 100


# -- transfers ----------------------------------------------------------------------------------


async def test_a_transfer_moves_points_with_their_issuer_and_expiry(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    cinema: OnboardedPartner,
    engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    alice = await _member(grocer)
    soon = (clock.now() + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await grocer.client.earn(alice, 300, reference="promo", expires_at=soon)
    await grocer.client.earn(alice, 500, reference="basket")
    bob = await _member(cinema, 50)
    bearer = await _bearer(grocer, alice)

    sent = await _transfer(client, bearer, alice, bob, 400, "gift-1")
    assert sent.status_code == 201, sent.text
    body = sent.json()
    assert (body["type"], body["points"], body["to_member_id"]) == ("transfer_out", 400, bob)
    assert body["balance_after"] == {"available": 400, "held": 0, "pending": 0}
    # Soonest-expiring first, like a burn: all 300 promotional points, then 100 more.
    assert [(lot["issuer"], lot["points"], lot["expires_at"]) for lot in body["lots"]] == [
        ("grocer", 300, soon),
        ("grocer", 100, "2029-11-22T10:00:00Z"),
    ]
    # A replay returns the same bytes; the same key for another body is refused.
    again = await _transfer(client, bearer, alice, bob, 400, "gift-1")
    assert (again.status_code, again.content) == (201, sent.content)
    assert again.headers["idempotency-replayed"] == "true"
    _problem(await _transfer(client, bearer, alice, bob, 5, "gift-1"), 422,
             "idempotency_key_reused")  # fmt: skip

    bob_balance = await cinema.client.balance(bob)
    assert bob_balance["available"] == 450
    assert bob_balance["expiring"][0] == {"points": 300, "expires_at": soon}
    bob_bearer = await _bearer(cinema, bob)
    history = await client.get(f"/v1/members/{bob}/transactions", headers=bob_bearer)
    assert [(i["type"], i["points"]) for i in history.json()["items"]][:1] == [("transfer_in", 400)]
    mine = await client.get(f"/v1/members/{alice}/transactions", headers=bearer)
    assert mine.json()["items"][0]["type"] == "transfer_out"

    # Bob spends the grocer's points at the cinema: attributed to the grocer as issuer.
    # Soonest-expiring first: the 300 promotional points, then Bob's own 50 (same expiry
    # as the grocer's other 100, but an older lot), then 70 of the transferred 100.
    await cinema.client.burn(bob, 420, reference="tickets")
    async with engine.connect() as conn:
        flows = (
            await conn.execute(
                text(
                    "SELECT l.issuer_id, sum(a.points) FROM allocations a "
                    "JOIN lots l ON l.lot_id = a.lot_id JOIN postings p ON p.posting_id = "
                    "a.posting_id WHERE p.type = 'burn' GROUP BY l.issuer_id"
                )
            )
        ).all()
    assert sorted((issuer, int(points)) for issuer, points in flows) == [
        ("cinema", 50),
        ("grocer", 370),
    ]
    totals = await assert_ledger_verifies(engine)
    assert totals["transfers"] == 1


async def test_transfer_refusals_change_nothing(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    engine: AsyncEngine,
    clock: FrozenClock,
) -> None:
    alice = await _member(grocer, 3_000)
    bob = await _member(grocer, 10)
    bearer = await _bearer(grocer, alice)

    _problem(await _transfer(client, bearer, alice, bob, 1_001, "k1"), 422,
             "transfer_limit_exceeded")  # fmt: skip
    _problem(await _transfer(client, bearer, alice, "mem_" + "0" * 32, 10, "k2"), 404,
             "member_not_found")  # fmt: skip
    _problem(await _transfer(client, bearer, alice, alice, 10, "k3"), 422, "validation_error")
    _problem(await _transfer(client, bearer, alice, bob, 0, "k4"), 422, "validation_error")
    _problem(await _transfer(client, bearer, alice, bob, 1.5, "k5"), 422, "validation_error")
    _problem(await _transfer(client, bearer, bob, alice, 10, "k6"), 404, "member_not_found")
    missing_key = await client.post(
        f"/v1/members/{alice}/transfers", json={"to_member_id": bob, "points": 5},
        headers=bearer,
    )  # fmt: skip
    _problem(missing_key, 400, "idempotency_key_missing")
    no_token = await client.post(
        f"/v1/members/{alice}/transfers", json={"to_member_id": bob, "points": 5},
        headers={"Idempotency-Key": "k7"},
    )  # fmt: skip
    assert no_token.status_code == 401
    bob_bearer = await _bearer(grocer, bob)
    _problem(await _transfer(client, bob_bearer, bob, alice, 11, "k8"), 422,
             "insufficient_points")  # fmt: skip
    assert (await grocer.client.balance(alice))["available"] == 3_000

    # 30-day limit: 1,000 + 500 pass, the next point does not; 30 days later it does.
    assert (await _transfer(client, bearer, alice, bob, 1_000, "k9")).status_code == 201
    assert (await _transfer(client, bearer, alice, bob, 500, "k10")).status_code == 201
    _problem(await _transfer(client, bearer, alice, bob, 1, "k11"), 422,
             "transfer_limit_exceeded")  # fmt: skip
    clock.advance(timedelta(days=30, seconds=1))
    bearer = await _bearer(grocer, alice)
    assert (await _transfer(client, bearer, alice, bob, 1, "k11")).status_code == 201

    # A negative balance (a clawback) refuses transfers like burns.
    carol = await _member(grocer)
    earned = await grocer.client.earn(carol, 100, reference="c-1")
    carol_bearer = await _bearer(grocer, carol)
    assert (await _transfer(client, carol_bearer, carol, bob, 100, "c1")).status_code == 201
    await grocer.client.reverse(earned["transaction_id"])
    assert (await grocer.client.balance(carol))["available"] == -100
    _problem(await _transfer(client, carol_bearer, carol, bob, 1, "c2"), 422,
             "insufficient_points")  # fmt: skip
    await assert_ledger_verifies(engine)


async def test_opposite_transfers_at_once_neither_deadlock_nor_lose_points(
    client: httpx.AsyncClient, grocer: OnboardedPartner, cinema: OnboardedPartner,
    engine: AsyncEngine,
) -> None:  # fmt: skip
    alice = await _member(grocer, 900)
    bob = await _member(cinema, 900)
    alice_bearer, bob_bearer = await _bearer(grocer, alice), await _bearer(cinema, bob)
    rounds = 15
    sends = []
    for index in range(rounds):
        sends.append(_transfer(client, alice_bearer, alice, bob, 7, f"a-{index}"))
        sends.append(_transfer(client, bob_bearer, bob, alice, 5, f"b-{index}"))
    responses = await asyncio.gather(*sends)
    assert [response.status_code for response in responses] == [201] * 2 * rounds
    assert (await grocer.client.balance(alice))["available"] == 900 - 2 * rounds
    assert (await cinema.client.balance(bob))["available"] == 900 + 2 * rounds
    totals = await assert_ledger_verifies(engine)
    assert (totals["transfers"], totals["outstanding"]) == (2 * rounds, 1_800)


async def test_settlement_reconciles_with_transfers_in_the_period(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    cinema: OnboardedPartner,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> None:
    alice = await _member(grocer, 1_000)
    bob = await _member(cinema)
    bearer = await _bearer(grocer, alice)
    assert (await _transfer(client, bearer, alice, bob, 600, "t")).status_code == 201
    await cinema.client.burn(bob, 250, reference="tickets")
    clock.advance(timedelta(days=1))
    period_end = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    run = await client.post(
        "/v1/admin/settlements", json={"period_end": period_end}, headers=admin_headers
    )
    assert run.status_code == 201, run.text
    body = run.json()
    assert body["reconciled"] is True
    controls = body["controls"]
    # Transfers are neither issuance nor redemption: outstanding = issued - redeemed.
    assert (controls["issued"], controls["redeemed"], controls["outstanding_end"]) == (
        1_000,
        250,
        750,
    )
    assert body["cross_brand"] == [{"issuer_id": "grocer", "redeemer_id": "cinema", "points": 250}]


# -- data rights --------------------------------------------------------------------------------


async def test_the_export_covers_every_table_that_mentions_the_member(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    cinema: OnboardedPartner,
    engine: AsyncEngine,
    finance_headers: dict[str, str],
) -> None:
    alice = await _member(grocer, 700, reference="card-alice")
    bob = await _member(grocer, 10)
    await cinema.client.earn(alice, 40, reference="film")
    await cinema.client.create_hold(alice, 30, reference="till-9")
    bearer = await _bearer(grocer, alice)
    assert (await _transfer(client, bearer, alice, bob, 100, "x")).status_code == 201
    # An operator's correction still waiting for its second pair of eyes is about her too.
    adjustment = {"member_id": alice, "points": 5, "issuer": "grocer", "reason": "goodwill"}
    requested = await client.post(
        "/v1/adjustments", json=adjustment, headers=finance_headers | {"Idempotency-Key": "a1"}
    )
    assert requested.status_code == 201, requested.text

    exported = await client.get(f"/v1/members/{alice}/export", headers=bearer)
    assert exported.status_code == 200, exported.text
    document = exported.json()
    assert document["tier"]["qualifying_points"] == 740
    assert document["balance"]["available"] == 700 + 40 - 30 - 100
    assert {(r["partner_id"], r["reference"]) for r in document["references"]} >= {
        ("grocer", "card-alice"),
        ("cinema", "film"),
        ("cinema", "till-9"),
    }
    assert all("token" not in key for session in document["sessions"] for key in session)
    # The partners' requests kept on the postings (keys, responses, signatures) are not
    # the member's history.
    assert document["history"]
    assert all(not set(REQUEST_COLUMNS) & set(row) for row in document["history"])

    async with engine.connect() as conn:
        tables = [
            row[0]
            for row in await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND column_name = 'member_id' "
                    "ORDER BY table_name"
                )
            )
        ]
        for table in tables:
            # A table the export does not cover fails here until the export covers it.
            assert table in EXPORT_SECTIONS, f"the export does not cover table {table}"
            count = (
                await conn.execute(
                    text(f"SELECT count(*) FROM {table} WHERE member_id = :m"),
                    {"m": alice},
                )
            ).scalar_one()
            section = document[EXPORT_SECTIONS[table]]
            rows = [section] if isinstance(section, dict) else section
            assert len(rows) == count, table
            assert count > 0, f"the fixture should put a row about the member in {table}"
    other = await client.get(f"/v1/members/{bob}/export", headers=bearer)
    _problem(other, 404, "member_not_found")


async def test_erasure_scrubs_the_member_and_leaves_settlement_unchanged(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    cinema: OnboardedPartner,
    engine: AsyncEngine,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
) -> None:
    alice = await _member(grocer, 800, reference="card-alice")
    bob = await _member(grocer, 10)
    await cinema.client.burn(alice, 200, reference="tickets-1", idempotency_key="burn-1")
    bearer = await _bearer(grocer, alice)
    assert (await _transfer(client, bearer, alice, bob, 100, "x")).status_code == 201
    clock.advance(timedelta(days=1))
    period_end = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    run = (
        await client.post(
            "/v1/admin/settlements", json={"period_end": period_end}, headers=admin_headers
        )
    ).json()
    period = Period(clock.now() - timedelta(days=3650), clock.now())
    async with engine.connect() as conn:
        before = settle(await read_period(conn, period), previous_outstanding_end=None)

    _problem(await client.delete(f"/v1/admin/members/{alice}", headers=finance_headers), 403,
             "forbidden")  # fmt: skip
    erased = await client.delete(f"/v1/admin/members/{alice}", headers=admin_headers)
    assert erased.status_code == 200, erased.text
    assert erased.json()["status"] == "erased"
    _problem(await client.delete(f"/v1/admin/members/{alice}", headers=admin_headers), 404,
             "member_not_found")  # fmt: skip

    # Every later request about the member: 404 (the revoked token: 401).
    for refused in (
        grocer.client.balance(alice),
        grocer.client.earn(alice, 5, reference="after"),
        grocer.client.burn(alice, 5),
        grocer.client.create_session(alice),
        # A retry of a request made before: never a replay of its stored response.
        cinema.client.burn(alice, 200, reference="tickets-1", idempotency_key="burn-1"),
    ):
        with pytest.raises(PartnerAPIError) as caught:
            await refused
        assert (caught.value.status, caught.value.code) == (404, "member_not_found")
    with pytest.raises(PartnerAPIError) as listed:
        await grocer.client.list_transactions(member_id=alice)
    assert (listed.value.status, listed.value.code) == (404, "member_not_found")
    bob_bearer = await _bearer(grocer, bob)
    _problem(await _transfer(client, bob_bearer, bob, alice, 1, "y"), 404, "member_not_found")
    gone = await client.get(f"/v1/members/{alice}/balance", headers=bearer)
    assert gone.status_code == 401

    async with engine.connect() as conn:
        scrubbed = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM postings WHERE member_id = :m "
                    "        AND (reference IS NOT NULL OR idempotency_key IS NOT NULL"
                    "             OR response IS NOT NULL)),"
                    "       (SELECT count(*) FROM member_links WHERE member_id = :m),"
                    "       (SELECT count(*) FROM member_sessions WHERE member_id = :m),"
                    "       (SELECT status FROM members WHERE member_id = :m),"
                    "       (SELECT reference FROM members WHERE member_id = :m),"
                    "       (SELECT sum(points) FROM postings WHERE member_id = :m)"
                ),
                {"m": alice},
            )
        ).one()
        after = settle(await read_period(conn, period), previous_outstanding_end=None)
    assert tuple(scrubbed) == (0, 0, 0, "erased", None, 800 + 200 + 100)
    # The journal's amounts stay under the pseudonymous id: every settlement figure is equal.
    assert after == before
    stored = await client.get(f"/v1/settlements/{run['run_id']}", headers=admin_headers)
    assert stored.json() == run
    await assert_ledger_verifies(engine)


async def test_the_journal_refuses_any_other_change_during_an_erasure(
    engine: AsyncEngine, grocer: OnboardedPartner
) -> None:
    alice = await _member(grocer, 100)
    async with engine.connect() as conn:
        await conn.execute(
            text("SELECT set_config('exchange.erasing_member', :m, false)"), {"m": alice}
        )
        for statement in (
            "UPDATE postings SET points = 1 WHERE member_id = :m",
            "UPDATE postings SET reference = 'x' WHERE member_id = :m",
            "DELETE FROM postings WHERE member_id = :m",
        ):
            with pytest.raises(Exception, match="append-only"):
                async with conn.begin_nested():
                    await conn.execute(text(statement), {"m": alice})
        await conn.rollback()


async def test_a_transfer_whose_key_is_in_flight_is_409_and_changes_nothing(
    client: httpx.AsyncClient, grocer: OnboardedPartner, engine: AsyncEngine
) -> None:
    alice = await _member(grocer, 500)
    bob = await _member(grocer)
    bearer = await _bearer(grocer, alice)
    async with engine.connect() as conn, conn.begin():
        # What the first request holds while it is being processed.
        await conn.execute(
            text(
                "SELECT pg_advisory_xact_lock("
                "hashtextextended('member' || chr(31) || :m || chr(31) || 'busy', 0))"
            ),
            {"m": alice},
        )
        _problem(await _transfer(client, bearer, alice, bob, 5, "busy"), 409,
                 "request_in_progress")  # fmt: skip
    assert (await grocer.client.balance(alice))["available"] == 500
    # Once the first is done, the key is free (nothing was stored under it).
    assert (await _transfer(client, bearer, alice, bob, 5, "busy")).status_code == 201
