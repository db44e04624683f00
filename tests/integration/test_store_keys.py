"""The store's one idempotency claim and one remember, on real PostgreSQL: both scopes,
both kinds of caller (the store's connection, and a SQLAlchemy `engine.begin()` block
reaching it through `store.driver_of`), and the database transaction they join."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import store
from exchange.clock import FrozenClock
from exchange.db import driver_connection
from exchange.errors import IdempotencyKeyReused, RequestInProgress
from exchange.service import (
    Earn,
    Idempotency,
    LedgerRequest,
    LedgerService,
    Outcome,
    remember,
    replay_or_claim,
)
from settlement import store as settlement_store
from tests.support import add_partner, enrol, fingerprint, submit

KEY = Idempotency("key-1", b"f" * 32)


class Boom(Exception):
    pass


async def _stored(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def test_a_key_remembered_in_a_rolled_back_block_is_not_stored(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """The store statement joins the block's database transaction (SQLAlchemy's lazy BEGIN
    is sent first): a failure after it leaves nothing behind, and the key is free again."""
    await add_partner(engine, clock)

    async def remember_then_fail() -> None:
        async with engine.begin() as conn:
            assert await replay_or_claim(conn, "grocer", KEY) is None
            await remember(conn, "grocer", idempotency=KEY, status_code=201, body=b"{}")
            raise Boom

    with pytest.raises(Boom):
        await remember_then_fail()
    assert await _stored(engine, "idempotency_keys") == 0
    async with engine.begin() as conn:
        assert await replay_or_claim(conn, "grocer", KEY) is None


async def test_a_remembered_key_replays_and_refuses_another_request(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock)
    async with engine.begin() as conn:
        assert await replay_or_claim(conn, "grocer", KEY) is None
        await remember(conn, "grocer", idempotency=KEY, status_code=201, body=b'{"a":1}')
    async with engine.begin() as conn:
        assert await replay_or_claim(conn, "grocer", KEY) == Outcome(201, b'{"a":1}', replayed=True)
    other = Idempotency(KEY.key, b"g" * 32)
    async with driver_connection(engine) as conn, store.transaction(conn):
        with pytest.raises(IdempotencyKeyReused):
            await replay_or_claim(conn, "grocer", other)


async def test_a_key_claimed_by_an_open_transaction_is_in_progress(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock)
    async with driver_connection(engine) as first, store.transaction(first):
        assert await replay_or_claim(first, "grocer", KEY) is None
        async with driver_connection(engine) as second, store.transaction(second):
            with pytest.raises(RequestInProgress):
                await replay_or_claim(second, "grocer", KEY)
            locked, _ = await store.claim_keys(second, [("grocer", KEY.key)], barrier=True)
            assert locked == set()


async def test_member_keys_are_their_own_scope(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """The same function with `scope=MEMBER_KEYS` writes and reads members' keys, and a
    partner's key of the same name is another key."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    claim = (member, KEY.key)
    record = store.IdempotencyRecord(member, KEY.key, KEY.fingerprint, 201, b"{}", None)
    async with driver_connection(engine) as conn, store.transaction(conn):
        locked, stored = await store.claim_keys(conn, [claim], scope=store.MEMBER_KEYS)
        assert (locked, stored) == ({claim}, {})
        await store.remember(conn, [record], scope=store.MEMBER_KEYS, at=clock.now())
    assert await _stored(engine, "member_idempotency_keys") == 1
    assert await _stored(engine, "idempotency_keys") == 0
    async with driver_connection(engine) as conn, store.transaction(conn):
        locked, stored = await store.claim_keys(conn, [claim], scope=store.MEMBER_KEYS)
        assert stored == {claim: store.StoredResponse(KEY.fingerprint, 201, b"{}")}
        async with engine.connect() as sa:
            at = await sa.scalar(text("SELECT created_at FROM member_idempotency_keys"))
        assert at == clock.now()
        # Partner scope, no barrier (the off-path claim): a different table and lock.
        locked, stored = await store.claim_keys(conn, [("grocer", KEY.key)], barrier=False)
        assert (locked, stored) == ({("grocer", KEY.key)}, {})


async def test_operator_keys_are_their_own_scope(engine: AsyncEngine, clock: FrozenClock) -> None:
    """Operators' POSTs use the same claim and remember, in their own table (no posting
    column) and lock namespace: a token's key replays, is refused for another request,
    is in progress while held, and never collides with a partner key of the same text."""
    token = "tok_" + "0" * 28
    async with engine.begin() as conn:
        assert await replay_or_claim(conn, token, KEY, scope=settlement_store.OPERATOR_KEYS) is None
        await remember(
            conn,
            token,
            idempotency=KEY,
            status_code=201,
            body=b'{"ok":true}',
            scope=settlement_store.OPERATOR_KEYS,
            at=clock.now(),
        )
    assert await _stored(engine, "operator_idempotency_keys") == 1
    assert await _stored(engine, "idempotency_keys") == 0
    async with engine.begin() as conn:
        again = await replay_or_claim(conn, token, KEY, scope=settlement_store.OPERATOR_KEYS)
        assert again == Outcome(201, b'{"ok":true}', replayed=True)
        other = Idempotency(KEY.key, b"g" * 32)
        with pytest.raises(IdempotencyKeyReused):
            await replay_or_claim(conn, token, other, scope=settlement_store.OPERATOR_KEYS)
    fresh = Idempotency("key-2", KEY.fingerprint)
    async with engine.begin() as holder:
        await replay_or_claim(holder, token, fresh, scope=settlement_store.OPERATOR_KEYS)
        async with engine.begin() as rival:
            with pytest.raises(RequestInProgress):
                await replay_or_claim(rival, token, fresh, scope=settlement_store.OPERATOR_KEYS)
            # The same text as a partner's key is another lock.
            assert await replay_or_claim(rival, token, fresh) is None


async def test_a_partners_key_is_one_key_wherever_its_response_is_stored(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """An earn stores its key on its posting, an enrolment in `idempotency_records`: either
    way the partner's next request with that key finds it (a replay, or 422 for another
    request), and the posting's stored response is what the view shows."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    earn = Earn("grocer", member, "r", points=10)
    first = await submit(ledger, earn, key="shared")
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT response, posting_id FROM postings WHERE idempotency_key = 'shared'")
            )
        ).one()
    assert bytes(row.response) == first.body
    async with driver_connection(engine) as conn, store.transaction(conn):
        with pytest.raises(IdempotencyKeyReused):
            await replay_or_claim(conn, "grocer", Idempotency("shared", b"enrol"))

    await ledger.enrol_member("grocer", None, Idempotency("enrolled", b"enrol"))
    [again] = await ledger.submit([LedgerRequest(earn, Idempotency("enrolled", fingerprint(earn)))])
    assert again.error is not None
    assert (again.error.code, again.error.status) == ("idempotency_key_reused", 422)
    assert await _stored(engine, "idempotency_records") == 1
    assert await _stored(engine, "idempotency_keys") == 2


_KEYED_COPY = """
INSERT INTO postings (posting_id, type, member_id, partner_id, points, reference, reverses,
    hold_id, unit_price, currency, posted_at, idempotency_key, request_fingerprint,
    response_status, response)
SELECT gen_random_uuid(), type, member_id, partner_id, points, reference, reverses, hold_id,
    unit_price, currency, posted_at, :key, '\\x00', 201, '\\x00'
FROM postings WHERE type = 'earn' LIMIT 1
"""


async def test_a_key_stored_in_one_place_is_refused_in_the_other(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """A claim reads before its try-lock is held (one statement), so it can miss a key
    that another transaction commits just then: the write that would store the key a
    second time, in the other place, fails as a duplicate key, which the posting path
    retries (and the retry replays). Without the triggers the key would be stored twice."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    await submit(ledger, Earn("grocer", member, "r", points=10), key="on-a-posting")
    await ledger.enrol_member("grocer", None, Idempotency("in-records", b"enrol"))

    record = store.IdempotencyRecord("grocer", "on-a-posting", b"f", 201, b"{}", None)

    async def remember_again() -> None:
        async with driver_connection(engine) as conn, store.transaction(conn):
            with store.translate_errors():
                await store.remember(conn, [record])

    with pytest.raises(store.RetryableConflict):
        await remember_again()
    with pytest.raises(IntegrityError, match="already stored in idempotency_records"):
        async with engine.begin() as conn:
            await conn.execute(text(_KEYED_COPY), {"key": "in-records"})
    async with engine.begin() as conn:  # a key stored nowhere else goes in
        await conn.execute(text(_KEYED_COPY), {"key": "fresh"})
    assert await _stored(engine, "idempotency_keys") == 3


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_a_claim_looks_a_posting_key_up_by_the_index_not_by_the_partner(
    engine: AsyncEngine,
) -> None:
    """The claim finds a key on a posting through the unique (partner, key) index, in the
    generic plan the posting path keeps. Read through the UNION ALL view instead, it read
    every keyed posting of the partner: PostgreSQL CPU per earn went from 0.4 to 3.9 ms."""
    async with driver_connection(engine) as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            for name, sql, arguments in (
                ("claim", store.PARTNER_KEYS.claim_sql(barrier=True), "('{p}', '{k}', 1)"),
                ("stored", store.PARTNER_KEYS.stored_sql(), "('{p}', '{k}')"),
            ):
                await conn.execute(f"PREPARE {name} AS {sql}")
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name} {arguments}")
                conditions = [
                    node.get("Index Cond", "")
                    for node in _nodes(plan[0]["Plan"])  # the pool's codec decodes json
                    if node.get("Index Name") == "uq_postings_partner_id_idempotency_key"
                ]
                assert len(conditions) == 1, name
                assert "c.key" in conditions[0], name
        finally:
            await conn.execute("DEALLOCATE ALL; RESET plan_cache_mode")


async def test_a_batch_writes_records_kept_apart_from_its_postings(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    """A key the batch cannot keep on a posting (its owner is not the posting's partner)
    is written to `idempotency_records` by the batch's write, and claims find it."""
    await add_partner(engine, clock)
    write = store.BatchWrite()
    write.add_records(
        [store.IdempotencyRecord("grocer", "apart", KEY.fingerprint, 201, b"{}", None)]
    )
    async with driver_connection(engine) as conn, store.transaction(conn):
        await store.write_batch(conn, write)
    async with driver_connection(engine) as conn, store.transaction(conn):
        _, stored = await store.claim_keys(conn, [("grocer", "apart")])
    assert stored == {("grocer", "apart"): store.StoredResponse(KEY.fingerprint, 201, b"{}")}
    assert await _stored(engine, "idempotency_records") == 1
