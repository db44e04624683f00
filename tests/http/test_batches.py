"""Batches over HTTP (contract §9): JSON and CSV files, exactly once per item id for ever,
rejected items alone, malformed files refused whole, results paginated."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import libpq_url
from exchange.ids import format_transaction_id
from exchange.wiring import Services
from partners.audit import verify_transaction
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.signed import signed
from tests.support import assert_ledger_verifies, member_row_held, until_a_session_waits_for_a_lock


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


async def _member(grocer: OnboardedPartner, points: int = 0) -> str:
    member = await grocer.client.enrol_member(reference="card-1")
    if points:
        await grocer.client.earn(member["member_id"], points, reference="welcome")
    member_id: str = member["member_id"]
    return member_id


async def _submit(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    items: list[dict[str, Any]],
    **kwargs: Any,
) -> httpx.Response:
    body = msgspec.json.encode({"items": items})
    return await signed(client, grocer, clock, "POST", "/v1/batches", body=body, **kwargs)


async def _finished(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, batch_id: str
) -> dict[str, Any]:
    for _ in range(400):
        got = await signed(client, grocer, clock, "GET", f"/v1/batches/{batch_id}")
        assert got.status_code == 200, got.text
        if got.json()["status"] == "completed":
            result: dict[str, Any] = got.json()
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never completed")


async def _results(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, batch_id: str
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        path = f"/v1/batches/{batch_id}/results?after={after}&limit=2"
        page = await signed(client, grocer, clock, "GET", path)
        assert page.status_code == 200, page.text
        found += page.json()["results"]
        if "next" not in page.json():
            return found
        after = int(page.json()["next"])


async def _balance(grocer: OnboardedPartner, member_id: str) -> int:
    balance = await grocer.client.balance(member_id)
    available: int = balance["available"]
    return available


async def test_a_json_batch_posts_each_item_and_a_refused_item_affects_no_other(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, app: Litestar
) -> None:
    member_id = await _member(grocer, points=10)
    m = member_id
    items = [
        {"item_id": "e-1", "type": "earn", "member_id": m, "reference": "o1", "points": 100},
        {"item_id": "b-1", "type": "burn", "member_id": member_id, "points": 5000},  # too many
        {"item_id": "b-2", "type": "burn", "member_id": member_id, "points": 30},
        {"item_id": "e-1", "type": "earn", "member_id": m, "reference": "o1", "points": 100},
        {"item_id": "e-2", "type": "earn", "member_id": member_id, "reference": "o2",
         "purchase": {"amount": "12.00", "currency": "EUR"}},
    ]  # fmt: skip
    accepted = await _submit(client, grocer, clock, items)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert accepted.json()["items"] == 5
    batch_id = accepted.json()["batch_id"]
    done = await _finished(client, grocer, clock, batch_id)
    assert (done["items"], done["posted"], done["rejected"]) == (5, 4, 1)
    assert "completed_at" in done
    results = await _results(client, grocer, clock, batch_id)
    assert [(r["item_id"], r["status"]) for r in results] == [
        ("e-1", "posted"), ("b-1", "rejected"), ("b-2", "posted"), ("e-1", "posted"),
        ("e-2", "posted"),
    ]  # fmt: skip
    assert results[1]["code"] == "insufficient_points"
    # The repeated item got the first one's result, not a second posting.
    assert results[0]["transaction_id"] == results[3]["transaction_id"]
    assert await _balance(grocer, member_id) == 10 + 100 - 30 + 12
    services: Services = app.state.services
    await assert_ledger_verifies(services.engine)
    # The upload's signature is each posting's evidence: the audit re-verifies it.
    audit = await verify_transaction(services.engine, results[2]["transaction_id"])
    assert audit.valid, audit.describe()
    assert audit.key_id == grocer.key_id


async def test_a_batch_posting_names_its_batch_whose_signature_is_its_evidence(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    app: Litestar,
    database_url: str,
) -> None:
    """The file's signature is stored once, with its batch: each posting names the batch
    and carries no copy, and `exchange audit` re-verifies the batch's signature for it, so
    tampering with that one stored signature fails the audit of every posting."""
    member_id = await _member(grocer)
    items = [
        {"item_id": f"v-{n}", "type": "earn", "member_id": member_id, "reference": "r", "points": 1}
        for n in range(3)
    ]
    batch_id = (await _submit(client, grocer, clock, items)).json()["batch_id"]
    await _finished(client, grocer, clock, batch_id)
    results = await _results(client, grocer, clock, batch_id)
    services: Services = app.state.services
    for result in results:
        audit = await verify_transaction(services.engine, result["transaction_id"])
        assert audit.valid, audit.describe()
        assert (audit.key_id, audit.partner_id) == (grocer.key_id, "grocer")
    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        stored = await conn.fetch(
            "SELECT batch_id, signature, signature_base FROM postings WHERE batch_id IS NOT NULL"
        )
        assert [tuple(row) for row in stored] == [(batch_id, None, None)] * 3
        # A batch posting carries no idempotency key and no stored answer: its item's
        # result, written in the same transaction, is its record.
        answers = await conn.fetch(
            "SELECT posting_id, idempotency_key, response FROM postings WHERE batch_id IS NOT NULL"
        )
        assert [(row["idempotency_key"], row["response"]) for row in answers] == [(None, None)] * 3
        recorded = await conn.fetch(
            "SELECT transaction_id FROM batch_item_results WHERE batch_id = $1", batch_id
        )
        assert sorted(format_transaction_id(row["posting_id"]) for row in answers) == sorted(
            row["transaction_id"] for row in recorded
        )
        assert sorted(row["transaction_id"] for row in recorded) == sorted(
            result["transaction_id"] for result in results
        )
        # Only a superuser switching triggers off could do this.
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE batches SET signature_base = signature_base || 'x' WHERE batch_id = $1",
                batch_id,
            )
    finally:
        await conn.close()
    for result in results:
        audit = await verify_transaction(services.engine, result["transaction_id"])
        assert audit.valid is False
        assert "signature INVALID" in audit.describe()


async def test_an_item_id_posts_once_for_ever_across_batches(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer)
    item = {"item_id": "x-1", "type": "earn", "member_id": member_id, "reference": "r", "points": 7}
    first = await _submit(client, grocer, clock, [item])
    await _finished(client, grocer, clock, first.json()["batch_id"])
    again = await _submit(client, grocer, clock, [item | {"points": 900}])
    assert again.json()["batch_id"] != first.json()["batch_id"]
    second = await _finished(client, grocer, clock, again.json()["batch_id"])
    one = await _results(client, grocer, clock, first.json()["batch_id"])
    two = await _results(client, grocer, clock, again.json()["batch_id"])
    assert one[0]["transaction_id"] == two[0]["transaction_id"]
    assert await _balance(grocer, member_id) == 7
    # The second batch counts its item as posted: its id's first result.
    assert (second["posted"], second["rejected"]) == (1, 0)


async def test_a_completed_batchs_status_is_its_completion_record(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, app: Litestar
) -> None:
    # Counted once, when it completed, in the same transaction: a status read of a
    # completed batch reads that record rather than counting its items again.
    member_id = await _member(grocer)
    item = {"item_id": "c-1", "type": "earn", "member_id": member_id, "reference": "r", "points": 7}
    accepted = await _submit(client, grocer, clock, [item])
    batch_id = accepted.json()["batch_id"]
    done = await _finished(client, grocer, clock, batch_id)
    assert (done["posted"], done["rejected"]) == (1, 0)
    services: Services = app.state.services
    async with services.engine.begin() as conn:
        # Not something the exchange ever does: it tells the record from a count.
        await conn.execute(
            text("UPDATE batches SET posted = 5, rejected = 3 WHERE batch_id = :batch_id"),
            {"batch_id": batch_id},
        )
    again = await signed(client, grocer, clock, "GET", f"/v1/batches/{batch_id}")
    assert (again.json()["posted"], again.json()["rejected"]) == (5, 3)


async def test_the_same_upload_again_is_replayed_not_queued_twice(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer)
    items = [
        {"item_id": "k-1", "type": "earn", "member_id": member_id, "reference": "r", "points": 3}
    ]
    first = await _submit(client, grocer, clock, items, idempotency_key="upload-1")
    second = await _submit(client, grocer, clock, items, idempotency_key="upload-1")
    assert second.status_code == 202
    assert second.headers["Idempotency-Replayed"] == "true"
    assert second.json() == first.json()


async def test_a_csv_batch_posts_its_rows(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer, points=50)
    csv_text = (
        "item_id,type,member_id,points,purchase_amount,purchase_currency,reference\n"
        f"c-1,earn,{member_id},20,,,till-4\n"
        f"c-2,burn,{member_id},15,,,\n"
        f"c-3,earn,{member_id},,5.00,EUR,till-5\n"
    )
    accepted = await signed(
        client,
        grocer,
        clock,
        "POST",
        "/v1/batches",
        body=csv_text.encode(),
        content_type="text/csv",
    )
    assert accepted.status_code == 202, accepted.text
    done = await _finished(client, grocer, clock, accepted.json()["batch_id"])
    assert (done["posted"], done["rejected"]) == (3, 0)
    assert await _balance(grocer, member_id) == 50 + 20 - 15 + 5


async def test_a_malformed_csv_is_refused_whole_with_its_line_numbers(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer)
    csv_text = (
        "item_id,type,member_id,points,reference\n"
        f"ok-1,earn,{member_id},20,r\n"
        f"bad-1,earn,{member_id},twenty,r\n"
        f"ok-2,earn,{member_id},20,r\n"
        f"bad-2,gift,{member_id},20,r\n"
    )
    refused = await signed(
        client,
        grocer,
        clock,
        "POST",
        "/v1/batches",
        body=csv_text.encode(),
        content_type="text/csv",
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "batch_malformed"
    assert "line 3" in refused.json()["detail"]
    assert "line 5" in refused.json()["detail"]
    assert "line 2" not in refused.json()["detail"]
    await asyncio.sleep(0.2)
    assert await _balance(grocer, member_id) == 0  # nothing of it was accepted


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"item_id,kind\nx,earn\n", "text/csv", 422, "batch_malformed"),
        (b'{"items": []}', "application/json", 422, "batch_malformed"),
        (
            b'{"items": [{"item_id": "a", "type": "earn"}]}',
            "application/json",
            422,
            "batch_malformed",
        ),
        (b'{"items": [], "extra": 1}', "application/json", 422, "batch_malformed"),
        (b"<xml/>", "application/xml", 415, "unsupported_media_type"),
    ],
    ids=["bad-header", "empty", "missing-fields", "unknown-field", "media-type"],
)
async def test_files_that_cannot_be_read_are_refused(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    refused = await signed(
        client, grocer, clock, "POST", "/v1/batches", body=body, content_type=content_type
    )
    assert refused.status_code == status, refused.text
    assert refused.json()["code"] == code


async def test_limits_ten_thousand_items_and_four_mebibytes(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    member_id = await _member(grocer)
    item = {"type": "burn", "member_id": member_id, "points": 1}
    too_many = [item | {"item_id": f"i-{n}"} for n in range(10_001)]
    over = await _submit(client, grocer, clock, too_many)
    assert over.status_code == 413, over.text
    huge = b'{"items": [' + b" " * (4 * 1024 * 1024) + b"]}"
    assert (
        await signed(client, grocer, clock, "POST", "/v1/batches", body=huge)
    ).status_code == 413
    # The rest of the API keeps its 64 KiB cap.
    big = msgspec.json.encode({"reference": "x" * (70 * 1024)})
    assert (await signed(client, grocer, clock, "POST", "/v1/members", body=big)).status_code == 413


async def test_another_partners_batch_is_not_found(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, onboard: PartnerFactory
) -> None:
    member_id = await _member(grocer)
    items = [
        {"item_id": "p-1", "type": "earn", "member_id": member_id, "reference": "r", "points": 3}
    ]
    batch_id = (await _submit(client, grocer, clock, items)).json()["batch_id"]
    cinema = await onboard("cinema")
    for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
        got = await signed(client, cinema, clock, "GET", path)
        assert got.status_code == 404
        assert got.json()["code"] == "batch_not_found"
    unknown = await signed(client, grocer, clock, "GET", "/v1/batches/bat_nope")
    assert unknown.status_code == 404


async def test_responses_have_exactly_the_documented_fields(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock
) -> None:
    """Contract §9's bodies, field for field, and the OpenAPI document describes them (a
    code generator gets typed results, not untyped objects)."""
    member_id = await _member(grocer)
    items = [
        {"item_id": "f-1", "type": "earn", "member_id": member_id, "reference": "r", "points": 3},
        {"item_id": "f-2", "type": "burn", "member_id": member_id, "points": 500},
    ]
    accepted = await _submit(client, grocer, clock, items)
    assert set(accepted.json()) == {"batch_id", "status", "items"}
    done = await _finished(client, grocer, clock, accepted.json()["batch_id"])
    assert set(done) == {
        "batch_id", "status", "items", "posted", "rejected", "created_at", "completed_at",
    }  # fmt: skip
    path = f"/v1/batches/{accepted.json()['batch_id']}/results?limit=1"
    first = await signed(client, grocer, clock, "GET", path)
    assert set(first.json()) == {"results", "next"}
    assert set(first.json()["results"][0]) == {"item_id", "status", "transaction_id"}
    rest = await signed(client, grocer, clock, "GET", f"{path}&after={first.json()['next']}")
    assert rest.json()["results"] == [
        {"item_id": "f-2", "status": "rejected", "code": "insufficient_points"}
    ]

    document = (await client.get("/schema/openapi.json")).json()
    operations = {
        ("/v1/batches", "post", "202"): "BatchAccepted",
        ("/v1/batches/{batch_id}", "get", "200"): "BatchStatus",
        ("/v1/batches/{batch_id}/results", "get", "200"): "BatchResultPage",
    }
    for (route, method, status), name in operations.items():
        response = document["paths"][route][method]["responses"][status]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}, (route, schema)
    status_schema = document["components"]["schemas"]["BatchStatus"]
    assert set(status_schema["required"]) == set(done) - {"completed_at"}
    assert status_schema["properties"]["status"]["enum"] == ["completed", "processing"]


async def test_a_stopping_server_finishes_its_chunk_and_the_next_start_posts_the_rest(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    app: Litestar,
    database_url: str,
    engine: AsyncEngine,
) -> None:
    """A graceful stop does not cancel database work midway: a processor whose chunk is
    waiting on the database finishes it and records its results, the rest of the batch
    stays pending, and the next start posts it, each item once."""
    member_id = await _member(grocer)
    items = [
        {"item_id": f"s-{n}", "type": "earn", "member_id": member_id, "reference": "r", "points": 1}
        for n in range(600)
    ]  # three chunks of 250, 250 and 100
    services: Services = app.state.services
    async with member_row_held(database_url, member_id) as held:
        batch_id = (await _submit(client, grocer, clock, items)).json()["batch_id"]
        await until_a_session_waits_for_a_lock(engine, "the first chunk")
        stopping = asyncio.create_task(services.batches.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done(), "stop cancelled the chunk in flight instead of waiting"
        await held.rollback()
    await asyncio.wait_for(stopping, 20)

    stopped = (await signed(client, grocer, clock, "GET", f"/v1/batches/{batch_id}")).json()
    assert (stopped["status"], stopped["posted"]) == ("processing", 250)
    assert await _balance(grocer, member_id) == 250

    services.batches.start()
    done = await _finished(client, grocer, clock, batch_id)
    assert (done["posted"], done["rejected"]) == (600, 0)
    assert await _balance(grocer, member_id) == 600
    await assert_ledger_verifies(services.engine)
