"""The statements a posting batch sends, counted on the pooled connections: each is a
round trip, the hot path's fixed cost per batch (docs/performance.md). A batch of signed
earns sends the same four whatever its size (the nonces, the claim, the member locks and
the books are one statement); a credit-limited partner adds two; a capture, whose member
is learnt from its hold, claims, resolves, locks and reads the books in four. And the
statements keep their plans: PostgreSQL does not plan them again for every batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.db import create_engine, driver_connection
from exchange.errors import NonceReplayed
from exchange.ids import parse_hold_id
from exchange.service import (
    CaptureHold,
    Earn,
    Idempotency,
    LedgerRequest,
    LedgerService,
    NonceClaim,
    OpenHold,
    SignatureProof,
)
from tests.support import add_partner, enrol

PROOF = SignatureProof(
    "grocer-key-1",
    'sig1=("@method" "@target-uri" "content-digest");created=1;keyid="grocer-key-1"',
    "sig1=:c2lnbmF0dXJl:",
    "sha-256=:ZGlnZXN0:",
    b'"@method": POST',
)
# asyncpg's own introspection of a type it has not met on this connection yet: once per
# connection and type, not per batch.
INTROSPECTION = ("SELECT current_setting('jit')", "WITH RECURSIVE typeinfo_tree",
                 "SELECT set_config('jit'")  # fmt: skip
# What each statement is, by how it starts.
STEPS = {
    "BEGIN": "begin",
    "INSERT INTO signature_nonces": "nonces",
    "WITH barrier": "claim",
    "WITH barrier AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($3::bigint) AS held), "
    "claims AS": "claim and lock",
    "WITH spent AS (INSERT INTO signature_nonces": "nonces, claim and lock",
    "SELECT 'hold' AS kind": "resolve",
    "WITH locked": "lock and terms",
    "SELECT closed_until, lots, holds FROM ledger_books": "books",
    "SELECT partner_id": "lock credit-limited",
    "SELECT json_build_array(": "lock credit-limited",
    "SELECT partner_id, coalesce(sum(issued_value)": "exposure",
    "WITH new_postings": "write",
    "COMMIT": "commit",
}


def _step(query: str) -> str:
    text = " ".join(query.split())
    matches = [prefix for prefix in STEPS if text.startswith(prefix)]
    return STEPS[max(matches, key=len)] if matches else text[:60]


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement sent on a connection checked out inside the block, in order."""
    sent: list[str] = []
    watched: list[Any] = []

    def log(record: Any) -> None:
        if not " ".join(record.query.split()).startswith(INTROSPECTION):
            sent.append(_step(record.query))

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        driver.add_query_logger(log)
        watched.append(driver)

    event.listen(engine.sync_engine.pool, "checkout", on_checkout)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine.pool, "checkout", on_checkout)
        for driver in watched:
            driver.remove_query_logger(log)


def _signed_earns(members: list[str], clock: FrozenClock, tag: str) -> list[LedgerRequest]:
    return [
        LedgerRequest(
            Earn("grocer", member_id, f"{tag}-{index}", points=10),
            Idempotency(f"{tag}-key-{index}", bytes(32)),
            PROOF,
            NonceClaim(PROOF.key_id, f"{tag}-nonce-{index:04}", clock.now()),
        )
        for index, member_id in enumerate(members)
    ]


async def test_a_batch_of_signed_earns_sends_four_statements_whatever_its_size(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock)
    members = [await enrol(ledger, "grocer") for _ in range(5)]
    expected = ["begin", "nonces, claim and lock", "write", "commit"]
    for size in (1, 5):
        with statements(engine) as sent:
            outcomes = await ledger.submit(_signed_earns(members[:size], clock, f"b{size}"))
        assert [outcome.status_code for outcome in outcomes] == [201] * size
        assert sent == expected, sent


async def test_a_batch_that_posts_nothing_still_spends_its_nonces(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """Every request refused (no such member): no write, but the nonces are stored, so
    each refusal has spent its nonce."""
    await add_partner(engine, clock)
    requests = _signed_earns(["mem_nobody", "mem_nobody_either"], clock, "refused")
    with statements(engine) as sent:
        outcomes = await ledger.submit(requests)
    assert [outcome.status_code for outcome in outcomes] == [404, 404]
    assert sent == ["begin", "nonces, claim and lock", "commit"], sent
    [again, _] = await ledger.submit(requests)
    assert isinstance(again.error, NonceReplayed), again


async def test_a_credit_limited_partner_adds_its_lock_and_exposure(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    await add_partner(engine, clock, credit_limit="1000")
    members = [await enrol(ledger, "grocer") for _ in range(2)]
    with statements(engine) as sent:
        outcomes = await ledger.submit(_signed_earns(members, clock, "limited"))
    assert [outcome.status_code for outcome in outcomes] == [201, 201]
    assert sent == [
        "begin", "nonces, claim and lock", "lock credit-limited", "exposure", "write",
        "commit",
    ], sent  # fmt: skip


async def test_a_capture_is_claimed_then_resolved_then_locked(
    engine: AsyncEngine, clock: FrozenClock, ledger: LedgerService
) -> None:
    """A capture names a hold, not a member: the claim runs alone, the hold's member is
    resolved, then locked. A replay of the capture is answered from the claim."""
    await add_partner(engine, clock)
    member = await enrol(ledger, "grocer")
    await ledger.submit(_signed_earns([member], clock, "funds"))
    [held] = await ledger.submit([LedgerRequest(OpenHold("grocer", member, 5))])
    hold_id = parse_hold_id(msgspec.json.decode(held.body)["hold_id"])
    capture = LedgerRequest(CaptureHold("grocer", hold_id), Idempotency("capture", bytes(32)))
    with statements(engine) as sent:
        [captured] = await ledger.submit([capture])
    assert captured.status_code == 200
    assert sent == ["begin", "claim", "resolve", "lock and terms", "books", "write", "commit"]
    with statements(engine) as sent:
        [again] = await ledger.submit([capture])
    assert (again.replayed, again.body) == (True, captured.body)
    assert sent == ["begin", "claim", "commit"]


async def test_a_lone_earns_statements_keep_their_plans_instead_of_being_planned_each_time(
    database_url: str, clock: FrozenClock
) -> None:
    """The plan cache plans a statement five times with its parameters, then keeps one
    generic plan if that looks no dearer. With an array of unknown length estimated at ten
    elements, a batch of one never qualified: the books statement alone cost 0.5 ms of
    planning per batch. Through `unnest_small` (migration 0012) it does. The books query
    now runs inside `ledger_books` (migration 0015), whose PL/pgSQL keeps its plans by the
    same rule: auto_explain shows its plan reading the function's parameters (`$1`), not
    the batch's values planned in."""
    engine = create_engine(database_url, pool_size=1)  # every batch on one session
    notices: list[str] = []
    try:
        ledger = LedgerService(engine, clock, points_ttl=timedelta(days=1095))
        await add_partner(engine, clock)
        members = [await enrol(ledger, "grocer") for _ in range(3)]
        for index in range(12):
            earn = _signed_earns([members[index % 3]], clock, f"plan{index}")
            assert [outcome.status_code for outcome in await ledger.submit(earn)] == [201]
        async with driver_connection(engine) as conn:
            rows = await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            await conn.execute(
                "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
                " SET auto_explain.log_nested_statements = on; SET auto_explain.log_verbose = on;"
                " SET auto_explain.log_level = notice"
            )
            conn.add_log_listener(lambda _, message: notices.append(str(message)))
        earn = _signed_earns([members[0]], clock, "plan-explained")
        assert [outcome.status_code for outcome in await ledger.submit(earn)] == [201]
    finally:
        await engine.dispose()
    plans = {_step(row["statement"]): (row["generic_plans"], row["custom_plans"]) for row in rows}
    for step in ("nonces, claim and lock", "write"):
        generic, custom = plans[step]
        assert custom <= 5, (step, plans)
        assert generic >= 7, (step, plans)
    [books] = [notice for notice in notices if "WITH book_holds" in notice]
    assert "Function Call: unnest_small($1)" in books, books
    assert members[0] not in books, books
