"""A posting's nonce is spent in the posting's own database transaction (issue 16), and
a signed balance read's in the read's own statement (one round trip to PostgreSQL, not
two: the gateway's nonce write, then the book read).

One durable commit per request instead of two must not open a replay: a replayed nonce is
still 401 `nonce_replayed` before any effect, whether it races in the same batch, in
another batch, or arrives later; a request refused for any reason still spends its nonce.
The same holds for reads sharing a statement: copies racing into one are answered once,
whatever the member, and a read refused before its statement spends its nonce all the
same.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.errors import NonceReplayed
from exchange.ids import new_member_id
from exchange.service import Earn, LedgerRequest, LedgerService, NonceClaim
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.test_gateway_signatures import (
    assert_problem,
    json_body,
    posting_count,
    sign_headers,
    url,
)
from tests.integration.test_round_trips import statements
from tests.support import until_a_session_waits_for_a_lock


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


@pytest.fixture
async def member_id(grocer: OnboardedPartner) -> str:
    member = await grocer.client.enrol_member(reference="card-1")
    await grocer.client.earn(member["member_id"], 500, reference="welcome")
    member_id: str = member["member_id"]
    return member_id


async def _nonces(engine: AsyncEngine, nonce: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM signature_nonces WHERE nonce = :n"), {"n": nonce}
        )
    return int(found or 0)


async def _earn(
    client: httpx.AsyncClient,
    partner: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
    *,
    nonce: str,
    points: int = 10,
    key: str | None = None,
) -> httpx.Response:
    body = json_body({"member_id": member_id, "points": points, "reference": "order-n"})
    headers = sign_headers(
        partner,
        clock,
        "POST",
        "/v1/earn",
        body=body,
        nonce=nonce,
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )
    return await client.post(url("/v1/earn"), content=body, headers=headers)


async def test_an_earn_spends_its_nonce_with_the_posting(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    nonce = "posting-nonce-000000001"
    first = await _earn(client, grocer, clock, member_id, nonce=nonce)
    assert first.status_code == 201, first.text
    assert await _nonces(engine, nonce) == 1
    before = await posting_count(engine)
    # The same nonce under a new Idempotency-Key (a forged second request): refused.
    again = await _earn(client, grocer, clock, member_id, nonce=nonce)
    assert_problem(again, 401, "nonce_replayed")
    assert await posting_count(engine) == before
    assert (await grocer.client.balance(member_id))["available"] == 510


async def test_racing_requests_with_one_nonce_post_exactly_once(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """Concurrent requests share batches (group commit) or race in separate ones: one
    nonce still admits exactly one of them, and only that one posts."""
    nonce = "racing-nonce-0000000001"
    before = await posting_count(engine)
    answers = await asyncio.gather(
        *(_earn(client, grocer, clock, member_id, nonce=nonce) for _ in range(12))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] + [401] * 11, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 401:
            assert_problem(answer, 401, "nonce_replayed")
    assert await posting_count(engine) == before + 1
    assert (await grocer.client.balance(member_id))["available"] == 510


async def test_a_request_the_ledger_refuses_still_spends_its_nonce(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    body = json_body({"member_id": member_id, "points": 501})
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body)
    refused = await client.post(url("/v1/burn"), content=body, headers=headers)
    assert_problem(refused, 422, "insufficient_points")
    clock.advance(timedelta(seconds=10))
    replay = await client.post(url("/v1/burn"), content=body, headers=headers)
    assert_problem(replay, 401, "nonce_replayed")


async def test_a_request_refused_before_the_ledger_still_spends_its_nonce(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    nonce = "invalid-body-nonce-00001"
    body = json_body({"member_id": member_id, "points": "ten", "reference": "x"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body, nonce=nonce)
    refused = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert_problem(refused, 422, "validation_error")
    assert await _nonces(engine, nonce) == 1
    replay = await client.post(url("/v1/earn"), content=body, headers=headers)
    assert_problem(replay, 401, "nonce_replayed")


async def test_a_read_spends_its_nonce_too(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """Reads' nonces are committed without waiting for the disk, but committed: a replay
    of a balance read is refused like any other."""
    path = f"/v1/members/{member_id}/balance"
    nonce = "balance-read-nonce-0001"
    headers = sign_headers(grocer, clock, "GET", path, nonce=nonce)
    assert (await client.get(url(path), headers=headers)).status_code == 200
    assert await _nonces(engine, nonce) == 1
    assert_problem(await client.get(url(path), headers=headers), 401, "nonce_replayed")


async def test_one_nonce_twice_in_one_batch_admits_the_first_only(
    grocer: OnboardedPartner, member_id: str, clock: FrozenClock, engine: AsyncEngine
) -> None:
    """The ledger itself, one submit (one database transaction): the second use of a
    nonce in the batch is refused, its neighbour posts, and the nonce is stored once."""
    ledger = LedgerService(engine, clock, points_ttl=timedelta(days=365))
    claim = NonceClaim(grocer.key_id, "same-batch-nonce-000001", clock.now())
    other = NonceClaim(grocer.key_id, "same-batch-nonce-000002", clock.now())
    before = await posting_count(engine)
    outcomes = await ledger.submit(
        [
            LedgerRequest(Earn(grocer.partner_id, member_id, "a", points=1), nonce=claim),
            LedgerRequest(Earn(grocer.partner_id, member_id, "b", points=2), nonce=claim),
            LedgerRequest(Earn(grocer.partner_id, member_id, "c", points=3), nonce=other),
        ]
    )
    assert [o.status_code for o in outcomes] == [201, 401, 201]
    assert isinstance(outcomes[1].error, NonceReplayed)
    assert await posting_count(engine) == before + 2
    assert await _nonces(engine, claim.nonce) == 1
    # And a later batch with the stored nonce is refused too, changing nothing.
    late = await ledger.submit(
        [LedgerRequest(Earn(grocer.partner_id, member_id, "d", points=4), nonce=other)]
    )
    assert isinstance(late[0].error, NonceReplayed)
    assert await posting_count(engine) == before + 2


async def test_a_nonce_stored_elsewhere_while_the_batch_claims_it_is_refused(
    grocer: OnboardedPartner, member_id: str, clock: FrozenClock, engine: AsyncEngine
) -> None:
    """The gateway's nonce writer (a read's or a refused body's nonce) stores a pair in a
    transaction of its own. A batch claiming the same pair meanwhile waits for that
    transaction, then refuses the request as a replay when it commits. Nothing posts."""
    ledger = LedgerService(engine, clock, points_ttl=timedelta(days=365))
    claim = NonceClaim(grocer.key_id, "stored-meanwhile-nonce-1", clock.now())
    before = await posting_count(engine)
    async with engine.connect() as writer:
        await writer.execute(
            text("INSERT INTO signature_nonces (key_id, nonce, seen_at) VALUES (:k, :n, now())"),
            {"k": claim.key_id, "n": claim.nonce},
        )
        batch = asyncio.create_task(
            ledger.submit(
                [LedgerRequest(Earn(grocer.partner_id, member_id, "a", points=1), nonce=claim)]
            )
        )
        await until_a_session_waits_for_a_lock(engine, "the batch")
        assert not batch.done()
        await writer.commit()
    [outcome] = await batch
    assert isinstance(outcome.error, NonceReplayed), outcome
    assert await posting_count(engine) == before
    assert await _nonces(engine, claim.nonce) == 1


# -- balance reads: the nonce in the read's statement ----------------------------------

COPIES = 8


async def _read(
    client: httpx.AsyncClient,
    partner: OnboardedPartner,
    clock: FrozenClock,
    member_id: str,
    nonce: str,
) -> httpx.Response:
    path = f"/v1/members/{member_id}/balance"
    headers = sign_headers(partner, clock, "GET", path, nonce=nonce)
    return await client.get(url(path), headers=headers)


async def test_copies_of_one_signed_read_sent_at_once_are_answered_once(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """The copies reach the server together and wait together while another read's
    statement runs, so they share the next one: each copy must be its own read there
    (copies sharing one answer would all have been admitted), and only the first use of
    the nonce in a statement is answered."""
    nonce = "read-raced-nonce-000001"
    other, *answers = await asyncio.gather(
        _read(client, grocer, clock, member_id, "read-raced-nonce-000000"),
        *(_read(client, grocer, clock, member_id, nonce) for _ in range(COPIES)),
    )
    assert other.status_code == 200
    answered = [a for a in answers if a.status_code == 200]
    assert len(answered) == 1, [a.status_code for a in answers]
    assert answered[0].json()["available"] == 500
    for refused in answers:
        if refused.status_code != 200:
            assert_problem(refused, 401, "nonce_replayed")
    assert await _nonces(engine, nonce) == 1
    # A later copy is refused too, and a fresh nonce is answered.
    assert_problem(await _read(client, grocer, clock, member_id, nonce), 401, "nonce_replayed")
    fresh = await _read(client, grocer, clock, member_id, "read-raced-nonce-000002")
    assert fresh.status_code == 200


@pytest.mark.parametrize("who", ["unknown", "malformed"])
async def test_a_read_of_no_member_spends_its_nonce(
    who: str,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    """A member the exchange never enrolled is read by the statement and not found; an id
    it could not have minted never reaches PostgreSQL. Either way the answer is 404, the
    nonce is spent, and the replay is 401, not 404 again."""
    member_id = new_member_id() if who == "unknown" else "not-a-member"
    nonce = f"read-{who}-member-nonce-01"
    assert_problem(await _read(client, grocer, clock, member_id, nonce), 404, "member_not_found")
    assert await _nonces(engine, nonce) == 1
    assert_problem(await _read(client, grocer, clock, member_id, nonce), 401, "nonce_replayed")


async def test_a_nonce_a_posting_spent_is_spent_for_a_read(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
) -> None:
    nonce = "posting-then-read-nonce-1"
    body = json_body({"member_id": member_id, "points": 5, "reference": "order-r"})
    headers = sign_headers(grocer, clock, "POST", "/v1/earn", body=body, nonce=nonce)
    assert (await client.post(url("/v1/earn"), content=body, headers=headers)).status_code == 201
    assert_problem(await _read(client, grocer, clock, member_id, nonce), 401, "nonce_replayed")


async def test_a_signed_read_sends_one_statement(
    app: Litestar,
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
) -> None:
    """Before, the gateway wrote the nonce in a statement of its own, then the read ran."""
    warm = await _read(client, grocer, clock, member_id, "one-statement-nonce-0001")
    assert warm.status_code == 200  # the key is cached from here on
    with statements(app.state.services.engine) as sent:
        read = await _read(client, grocer, clock, member_id, "one-statement-nonce-0002")
    assert read.status_code == 200
    assert len(sent) == 1, sent
    assert sent[0].startswith("WITH not_durable"), sent
