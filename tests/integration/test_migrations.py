"""The migrations build exactly the schema the table definitions describe, and the ones
that change a live ledger's indexes go down and up over real data."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.batches import store as batch_store
from exchange.batches.service import BatchService, render_item
from exchange.batching import GroupCommitter
from exchange.clock import FrozenClock
from exchange.db import alembic_config, create_engine, current_revision, head_revision, migrate
from exchange.embedded import EmbeddedPostgres
from exchange.service import (
    BatchEvidence,
    Earn,
    Idempotency,
    LedgerRequest,
    LedgerService,
    SignatureProof,
)
from migrations.metadata import metadata
from tests.support import add_partner, enrol, fingerprint, submit


async def test_migrations_on_an_empty_database_match_the_models(postgres: EmbeddedPostgres) -> None:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = postgres.url(name)
    engine = create_engine(url)
    try:
        assert await current_revision(engine) is None
        # alembic runs its own event loop: run it in a thread, as `exchange migrate` would.
        await asyncio.to_thread(migrate, url)
        assert await current_revision(engine) == head_revision()

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
        assert differences == []
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(postgres.url("postgres"))
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


_DUPLICATE_EARN_LOT = """
INSERT INTO lots (lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,
                  available_at, expires_at, matured, created_at, source_lot_id)
SELECT $1, member_id, issuer_id, earn_id, initial, remaining, unit_price, available_at,
       expires_at, matured, created_at, {source}
FROM lots WHERE source_lot_id IS NULL ORDER BY created_at LIMIT 1
"""


async def _column(url: str, query: str) -> list[Any]:
    """The first column of a query's rows, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return [row[0] for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """A query's rows as tuples, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def _lot_indexes(url: str) -> set[str]:
    names = await _column(url, "SELECT indexname FROM pg_indexes WHERE tablename = 'lots'")
    return {name for name in names if "earn_id" in name}


async def test_one_lot_per_earn_holds_through_0011_up_and_down(
    database_url: str, engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """0011 replaces lots' two earn_id indexes by one unique (earn_id, source_lot_id)
    NULLS NOT DISTINCT index: over a ledger with lots it downgrades and upgrades, an earn
    still has one lot only, and a transfer's lots (one per source lot) still fit."""
    await add_partner(engine, clock)
    for _ in range(3):
        await submit(ledger, Earn("grocer", await enrol(ledger, "grocer"), "r", points=10))
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0010")
    assert await _lot_indexes(database_url) == {"uq_lots_earn_id", "ix_lots_earn_id"}
    await asyncio.to_thread(migrate, database_url)
    assert await _lot_indexes(database_url) == {"uq_lots_earn_id_source_lot_id"}

    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(_DUPLICATE_EARN_LOT.format(source="NULL"), uuid.uuid4())
        # A lot moved from another lot (a transfer_in's) shares the posting, not the source.
        source = await conn.fetchval("SELECT lot_id FROM lots ORDER BY created_at LIMIT 1")
        await conn.execute(_DUPLICATE_EARN_LOT.format(source="$2"), uuid.uuid4(), source)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(_DUPLICATE_EARN_LOT.format(source="$2"), uuid.uuid4(), source)
    finally:
        await conn.close()


async def test_unnest_small_comes_and_goes_with_0012_and_0024_and_is_planned_as_one_row(
    database_url: str,
) -> None:
    """0012's `unnest_small` gives an array's elements (one array, or two side by side;
    0024 adds three) with a declared estimate of one row, which the planner keeps because
    the function is not inlined: that estimate is what lets the posting path keep its
    generic plans."""

    async def functions() -> set[str]:
        return set(
            await _column(
                database_url,
                "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'unnest_small'",
            )
        )

    both = {"unnest_small(anyarray)", "unnest_small(anyarray,anyarray)"}
    three = "unnest_small(anyarray,anyarray,anyarray)"
    assert await functions() == {*both, three}
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0023")
    assert await functions() == both
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0011")
    assert await functions() == set()
    await asyncio.to_thread(migrate, database_url)
    assert await functions() == {*both, three}

    conn = await asyncpg.connect(database_url)
    try:
        many = [f"m{index:03}" for index in range(500)]
        assert (
            await conn.fetchval("SELECT array_agg(x) FROM unnest_small($1::text[]) AS x", many)
            == many
        )
        pairs = await conn.fetch(
            "SELECT * FROM unnest_small($1::text[], $2::text[])", ["p1", "p2"], ["k1", "k2"]
        )
        assert [tuple(row) for row in pairs] == [("p1", "k1"), ("p2", "k2")]
        triples = await conn.fetch(
            "SELECT * FROM unnest_small($1::text[], $2::text[], $3::text[])",
            ["p1", "p2"],
            ["k1", "k2"],
            ["n1", None],
        )
        assert [tuple(row) for row in triples] == [("p1", "k1", "n1"), ("p2", "k2", None)]
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM unnest_small($1::text[], $2::text[], $3::text[])",
            many,
            many,
            many,
        )
        assert json.loads(plan)[0]["Plan"]["Plan Rows"] == 1
        assert await conn.fetchval("SELECT count(*) FROM unnest_small(NULL::text[])") == 0
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM unnest_small($1::text[])", many
        )
        assert json.loads(plan)[0]["Plan"]["Plan Rows"] == 1
    finally:
        await conn.close()


async def _requests(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(database_url)
    try:
        keys = await conn.fetch(
            "SELECT partner_id, key, fingerprint, status_code, response, posting_id "
            "FROM idempotency_keys ORDER BY key"
        )
        signatures = await conn.fetch("SELECT * FROM posting_signatures ORDER BY posting_id")
    finally:
        await conn.close()
    return {"keys": [tuple(r) for r in keys], "signatures": [tuple(r) for r in signatures]}


async def test_requests_move_onto_their_postings_with_0014_and_back(
    database_url: str, engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """0014 moves each posting's signature evidence onto the posting and keeps the stored
    responses readable under the same name (`idempotency_keys`): down and up again over
    real data, every key and every signature reads back the same, and a replay after the
    round trip still returns the stored response."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    proof = SignatureProof("grocer-key", 'sig1=("@method")', ":c2ln:", None, b"base")
    earn = Earn("grocer", member, "r", points=10)
    [first] = await ledger.submit(
        [LedgerRequest(earn, Idempotency("k-1", fingerprint(earn)), signature=proof)]
    )
    await submit(ledger, Earn("grocer", member, "r", points=20), key="k-2")
    await ledger.enrol_member("grocer", None, Idempotency("k-3", b"enrol"))
    before = await _requests(database_url)
    assert [row[1] for row in before["keys"]] == ["k-1", "k-2", "k-3"]
    assert len(before["signatures"]) == 1

    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0013")
    assert await _requests(database_url) == before
    await asyncio.to_thread(migrate, database_url)
    assert await _requests(database_url) == before

    conn = await asyncpg.connect(database_url)
    try:
        placed = await conn.fetch(
            "SELECT idempotency_key, signature IS NOT NULL AS signed FROM postings ORDER BY points"
        )
        # The records came back from the downgrade's table, so they stay in it.
        assert [tuple(row) for row in placed] == [(None, True), (None, False)]
    finally:
        await conn.close()
    again = await ledger.submit([LedgerRequest(earn, Idempotency("k-1", fingerprint(earn)))])
    assert (again[0].replayed, again[0].body) == (True, first.body)


async def test_ledger_books_comes_and_goes_with_0015_and_stays_volatile(
    database_url: str,
) -> None:
    """0015's `ledger_books` must stay VOLATILE: that is what gives its query a snapshot
    taken after the calling statement's locks (docs/ledger.md). STABLE would read the
    books as they were before the lock's previous holder committed."""

    async def volatility() -> list[str]:
        return await _column(
            database_url, "SELECT provolatile::text FROM pg_proc WHERE proname = 'ledger_books'"
        )

    assert await volatility() == ["v"]
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0014")
    assert await volatility() == []
    await asyncio.to_thread(migrate, database_url)
    assert await volatility() == ["v"]


async def test_batch_items_read_the_same_through_0017_and_0018_down_and_up(
    database_url: str, engine: AsyncEngine, clock: FrozenClock
) -> None:
    """0017 drops each batch item's copy of its result (an item's result is its item id's
    first result), and 0018 stores the items' payloads as text. Down and up over a batch
    with a posted, a rejected, a repeated and a pending item: the downgrade writes back
    exactly the copy the old processor kept, and after the upgrade the batch's results,
    counts and pending item (with its payload) read the same."""
    await add_partner(engine, clock)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO batches (batch_id, partner_id, status, items, posted, rejected,"
            " created_at, key_id, signature_input, signature, signature_base)"
            " VALUES ('bat_1', 'grocer', 'processing', 4, 0, 0, now(), 'k', 'i', 's', 'b')"
        )
        await conn.execute(
            "INSERT INTO batch_items (batch_id, seq, item_id, payload) VALUES"
            " ('bat_1', 1, 'a', '{}'), ('bat_1', 2, 'b', '{}'),"
            """ ('bat_1', 3, 'c', '{"item_id":"c","type":"earn","points":5}'),"""
            " ('bat_1', 4, 'a', '{}')"
        )
        await conn.execute(
            "INSERT INTO batch_item_results (partner_id, item_id, status, transaction_id, code,"
            " batch_id) VALUES ('grocer', 'a', 'posted', 'txn_1', NULL, 'bat_1'),"
            " ('grocer', 'b', 'rejected', NULL, 'insufficient_points', 'bat_1')"
        )
    finally:
        await conn.close()

    async def read() -> tuple[list[tuple[Any, ...]], dict[str, int], list[tuple[Any, ...]]]:
        async with engine.connect() as connection:
            rows = await batch_store.list_results(connection, "bat_1", "grocer", 0, 10)
            counts = await batch_store.live_counts(connection, "bat_1", "grocer")
            pending = await batch_store.pending_items(connection, "bat_1", "grocer", 0, 10)
        items = [(item.seq, json.loads(item.payload)) for item in pending]
        return [tuple(row) for row in rows], counts, items

    before = await read()
    assert before == (
        [
            (1, "a", "posted", "txn_1", None),
            (2, "b", "rejected", None, "insufficient_points"),
            (4, "a", "posted", "txn_1", None),
        ],
        {"posted": 2, "rejected": 1},
        [(3, {"item_id": "c", "type": "earn", "points": 5})],
    )
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0016")
    copied = await _rows(
        database_url, "SELECT seq, status, transaction_id, code FROM batch_items ORDER BY seq"
    )
    assert copied == [
        (1, "posted", "txn_1", None),
        (2, "rejected", None, "insufficient_points"),
        (3, "pending", None, None),
        (4, "posted", "txn_1", None),
    ]
    await asyncio.to_thread(migrate, database_url)
    assert await read() == before


async def test_a_batch_postings_evidence_reads_the_same_through_0020_down_and_up(
    database_url: str, engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """0020 stores a batch posting's evidence once, with its batch. Down and up over a
    batch posting and a signed single posting: `posting_signatures` (what the audit reads)
    shows the same evidence for both all the way, the downgrade copying the batch's
    signature back onto its posting."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO batches (batch_id, partner_id, status, items, posted, rejected,"
            " created_at, key_id, signature_input, signature, content_digest, signature_base)"
            " VALUES ('bat_1', 'grocer', 'processing', 1, 0, 0, now(), 'batch-key',"
            " 'sig1=(\"content-digest\")', ':YmF0Y2g=:', 'sha-256=:x:', 'the file''s base')"
        )
    finally:
        await conn.close()
    earn = Earn("grocer", member, "r", points=10)
    single = SignatureProof("grocer-key", 'sig1=("@method")', ":c2ln:", None, b"base")
    await ledger.submit(
        [
            LedgerRequest(earn, Idempotency("k-1", fingerprint(earn)), signature=single),
            LedgerRequest(earn, Idempotency("batch-item:i-1", b"i-1"), BatchEvidence("bat_1")),
        ]
    )
    evidence = "SELECT * FROM posting_signatures ORDER BY key_id"
    before = await _rows(database_url, evidence)
    assert [(row[1], bytes(row[5])) for row in before] == [
        ("batch-key", b"the file's base"),
        ("grocer-key", b"base"),
    ]
    copies = "SELECT count(*) FROM postings WHERE signature IS NOT NULL"
    assert await _column(database_url, copies) == [1]

    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0019")
    assert await _rows(database_url, evidence) == before
    assert await _column(database_url, copies) == [2]
    await asyncio.to_thread(migrate, database_url)
    assert await _rows(database_url, evidence) == before


async def test_0023_records_an_item_posted_under_its_old_key_so_it_is_not_posted_again(
    database_url: str, engine: AsyncEngine, ledger: LedgerService, clock: FrozenClock
) -> None:
    """Before 0023 an item posted under the key `batch-item:<item_id>` and had its result
    recorded by a second transaction. A crash between the two left the item pending with
    its posting made. 0023 records that posting as the item's result, so the batch
    completes without posting the item a second time (batch postings carry no key now)."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    batches = BatchService(engine, clock, GroupCommitter(ledger, batch_max=64, concurrency=1))
    items = [
        {"item_id": i, "type": "earn", "member_id": member, "reference": i, "points": points}
        for i, points in (("i-1", 10), ("i-2", 20))
    ]
    proof = SignatureProof("grocer-key", 'sig1=("@method")', ":c2ln:", None, b"base")
    accepted = await batches.accept(
        "grocer", json.dumps({"items": items}).encode(), "application/json", proof, None
    )
    batch_id = json.loads(accepted.body)["batch_id"]
    # The old scheme's first transaction for i-1, and no second one.
    earn = Earn("grocer", member, "i-1", points=10)
    [posted] = await ledger.submit(
        [LedgerRequest(earn, Idempotency("batch-item:i-1", b"i-1"), BatchEvidence(batch_id))],
        render=render_item,
    )
    transaction_id = json.loads(posted.body)["transaction_id"]
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0022")
    await asyncio.to_thread(migrate, database_url)

    recorded = "SELECT item_id, status, transaction_id, batch_id FROM batch_item_results"
    assert await _rows(database_url, recorded) == [("i-1", "posted", transaction_id, batch_id)]
    assert await batches.process_next()
    page = await batches.results("grocer", batch_id, 0, 10)
    assert [(r.item_id, r.status) for r in page.results] == [("i-1", "posted"), ("i-2", "posted")]
    assert page.results[0].transaction_id == transaction_id
    assert (await ledger.read_balance(member)).available == 10 + 20
