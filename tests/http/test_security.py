"""Security findings of the review (issue 10, item 3), each proved through HTTP.

Every test here failed before its fix: forgeable keys, control characters reaching
PostgreSQL, the order of authentication checks, bearer tokens of any shape, and the
smaller ones. The embedded PostgreSQL's hardening is in tests/integration/test_embedded.py.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from litestar import Litestar
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.embedded import EmbeddedPostgres
from exchange.tables import idempotency_keys
from partners.signing import generate_keypair, is_acceptable_public_key, verify_signature_base
from partners.tables import partner_keys, signature_nonces
from tests.conftest import running
from tests.http.conftest import OnboardedPartner, PartnerFactory
from tests.http.test_gateway_signatures import assert_problem, json_body, sign_headers, url
from tests.support import add_partner

# The 8 points of small order and their non-canonical encodings (y >= p, or x = 0 with
# the sign bit set): the blocklist of libsodium's crypto_sign_verify_detached, also in
# "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, 2020), table 6.
SMALL_ORDER_HEX = (
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, -0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, -x
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p, sign
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p + 1, sign
)
IDENTITY_KEY = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
# R = the identity, S = 0: verifies under the identity key for any message at all.
FORGED_SIGNATURE = bytes.fromhex("01" + "00" * 31) + bytes(32)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@pytest.fixture
async def grocer(onboard: PartnerFactory) -> OnboardedPartner:
    return await onboard("grocer")


# --- forgeable keys -------------------------------------------------------------------------------


def test_the_forged_signature_really_verifies_under_the_identity_key() -> None:
    """The threat is real: without the check, one fixed signature fits every request."""
    raw = base64.urlsafe_b64decode(IDENTITY_KEY + "=")
    for message in (b"earn 1000 points", b"burn everything"):
        assert verify_signature_base(message, FORGED_SIGNATURE, raw)
    assert not is_acceptable_public_key(raw)


@pytest.mark.parametrize("hex_key", SMALL_ORDER_HEX)
async def test_registering_a_small_order_or_non_canonical_key_is_refused(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    admin_headers: dict[str, str],
    engine: AsyncEngine,
    hex_key: str,
) -> None:
    response = await client.post(
        f"/v1/admin/partners/{grocer.partner_id}/keys",
        json={"public_key": b64url(bytes.fromhex(hex_key))},
        headers=admin_headers,
    )
    assert_problem(response, 422, "validation_error")
    async with engine.connect() as conn:
        keys = (await conn.execute(select(partner_keys.c.key_id))).all()
    assert len(keys) == 1  # only the fixture's own key


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _spellings(public: str) -> list[str]:
    """Spellings of real 32-byte keys that must be refused."""
    # The last of 43 characters carries 4 bits and 2 unused ones that must be zero;
    # set one and the lax decoder reads the same 32 bytes from a second spelling.
    non_canonical = public[:-1] + ALPHABET[ALPHABET.index(public[-1]) | 1]
    return [non_canonical, public + "==", f" {public} ", public + "A", public[:-1]]


async def test_a_key_must_have_one_canonical_base64url_spelling(
    client: httpx.AsyncClient, grocer: OnboardedPartner, admin_headers: dict[str, str]
) -> None:
    path = f"/v1/admin/partners/{grocer.partner_id}/keys"
    _, public = generate_keypair()
    for spelling in _spellings(public):
        response = await client.post(path, json={"public_key": spelling}, headers=admin_headers)
        assert_problem(response, 422, "validation_error")
    # The canonical spelling, with or without its one '=' of padding, is registered.
    _, other = generate_keypair()
    for good in (public, other + "="):
        added = await client.post(path, json={"public_key": good}, headers=admin_headers)
        assert added.status_code == 201, added.text


async def test_a_small_order_key_stored_earlier_is_revoked_at_start_up(
    app: Litestar, engine: AsyncEngine, clock: FrozenClock
) -> None:
    """A key stored before the check existed: start-up revokes it, and a forged request
    under it is refused instead of posting."""
    await add_partner(engine, clock, "grocer", earn_rates={"EUR": "1"})
    async with engine.begin() as conn:
        await conn.execute(
            insert(partner_keys).values(
                key_id="key_identity",
                partner_id="grocer",
                public_key=base64.urlsafe_b64decode(IDENTITY_KEY + "="),
                status="active",
                created_at=clock.now(),
            )
        )
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await _forged_enrol(client, clock)
    assert_problem(response, 401, "key_revoked")
    async with engine.connect() as conn:
        status = await conn.scalar(
            select(partner_keys.c.status).where(partner_keys.c.key_id == "key_identity")
        )
    assert status == "revoked"


async def _forged_enrol(client: httpx.AsyncClient, clock: FrozenClock) -> httpx.Response:
    """POST /v1/members signed by anyone: any private key, then the fixed signature."""
    private, _ = generate_keypair()
    stand_in = OnboardedPartner("grocer", "key_identity", private, "", None)  # type: ignore[arg-type]
    body = json_body({})
    headers = sign_headers(stand_in, clock, "POST", "/v1/members", body=body)
    label = headers["Signature"].split("=", 1)[0]
    headers["Signature"] = f"{label}=:{base64.b64encode(FORGED_SIGNATURE).decode()}:"
    return await client.post(url("/v1/members"), content=body, headers=headers)


# --- contract order: authentication first ---------------------------------------------


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The default settings, or with the changes a test asks for (indirect param)."""
    changes: dict[str, Any] = getattr(request, "param", {})
    return settings.with_changes(**changes)


async def nonce_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(signature_nonces)) or 0


async def test_a_post_with_no_signature_at_all_is_401_signature_missing(
    client: httpx.AsyncClient, grocer: OnboardedPartner
) -> None:
    response = await client.post("/v1/members", json={})
    assert_problem(response, 401, "signature_missing")
    response = await client.post("/v1/members", json={}, headers={"Idempotency-Key": "k-1"})
    assert_problem(response, 401, "signature_missing")


async def test_an_unsigned_request_is_refused_without_reading_its_body(
    client: httpx.AsyncClient, grocer: OnboardedPartner
) -> None:
    """A stranger's upload costs nothing: the headers are refused before the body is read."""
    consumed: list[bytes] = []

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(4):
            consumed.append(b"x")
            yield b'{"reference": "' + b"x" * 16_000 + b'"}'

    headers = {"Idempotency-Key": "k-1", "Content-Type": "application/json"}
    response = await client.post("/v1/members", content=upload(), headers=headers)
    assert_problem(response, 401, "signature_missing")
    assert consumed == []


async def test_a_revoked_key_or_suspended_partner_is_revealed_only_to_a_valid_signature(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    admin_headers: dict[str, str],
) -> None:
    stranger, _ = generate_keypair()
    path = f"/v1/admin/partners/{grocer.partner_id}"
    suspended = await client.patch(path, json={"status": "suspended"}, headers=admin_headers)
    assert suspended.status_code == 200
    forged = sign_headers(grocer, clock, "GET", "/v1/transactions", private_key=stranger)
    response = await client.get(url("/v1/transactions"), headers=forged)
    assert_problem(response, 401, "signature_invalid")
    honest = sign_headers(grocer, clock, "GET", "/v1/transactions")
    response = await client.get(url("/v1/transactions"), headers=honest)
    assert_problem(response, 403, "partner_suspended")

    await client.patch(path, json={"status": "active"}, headers=admin_headers)
    revoked = await client.delete(f"{path}/keys/{grocer.key_id}", headers=admin_headers)
    assert revoked.status_code == 200
    forged = sign_headers(grocer, clock, "GET", "/v1/transactions", private_key=stranger)
    response = await client.get(url("/v1/transactions"), headers=forged)
    assert_problem(response, 401, "signature_invalid")
    honest = sign_headers(grocer, clock, "GET", "/v1/transactions")
    response = await client.get(url("/v1/transactions"), headers=honest)
    assert_problem(response, 401, "key_revoked")


@pytest.mark.parametrize("settings", [{"partner_rate_limit": "2/minute"}], indirect=True)
async def test_a_request_over_the_rate_limit_writes_no_nonce_and_reads_no_body(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, engine: AsyncEngine
) -> None:
    for _ in range(2):
        headers = sign_headers(grocer, clock, "GET", "/v1/transactions")
        assert (await client.get(url("/v1/transactions"), headers=headers)).status_code == 200
    before = await nonce_count(engine)
    body = json_body({"reference": "card-1"})
    headers = sign_headers(grocer, clock, "POST", "/v1/members", body=body)
    consumed: list[bytes] = []

    async def upload() -> AsyncIterator[bytes]:
        consumed.append(body)
        yield body

    response = await client.post(url("/v1/members"), content=upload(), headers=headers)
    assert_problem(response, 429, "rate_limited")
    assert await nonce_count(engine) == before
    assert consumed == []


# --- bearer tokens ------------------------------------------------------------------------------


async def _block_database(database_url: str, postgres: EmbeddedPostgres) -> None:
    """Make the test's database unreachable: no new connections, existing ones ended."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "token",
    ["xop_" + "A" * 10_000, "xop_" + "A" * 42 + "\x00", "xmt_" + "A" * 43, "anything"],
    ids=["10kb", "nul", "member-shape", "no-prefix"],
)
async def test_a_bearer_token_not_of_the_issued_shape_is_401_without_a_query(
    client: httpx.AsyncClient,
    database_url: str,
    postgres: EmbeddedPostgres,
    token: str,
) -> None:
    await _block_database(database_url, postgres)
    headers = [(b"authorization", b"Bearer " + token.encode("latin-1"))]
    response = await client.get("/v1/admin/partners", headers=headers)
    assert_problem(response, 401, "unauthorized")
    # The database really is gone: a token of the right shape needs it, and fails 503.
    well_formed = {"Authorization": "Bearer xop_" + "A" * 43}
    assert (await client.get("/v1/admin/partners", headers=well_formed)).status_code == 503


async def test_a_member_token_not_of_the_issued_shape_is_401_without_a_query(
    client: httpx.AsyncClient, database_url: str, postgres: EmbeddedPostgres
) -> None:
    await _block_database(database_url, postgres)
    path = "/v1/members/mem_" + "0" * 32 + "/transactions"
    for token in ("xmt_" + "A" * 5_000, "xmt_" + "A" * 42 + "\x00", "xop_" + "A" * 43):
        headers = [(b"authorization", b"Bearer " + token.encode("latin-1"))]
        assert_problem(await client.get(path, headers=headers), 401, "unauthorized")
    well_formed = {"Authorization": "Bearer xmt_" + "A" * 43}
    assert (await client.get(path, headers=well_formed)).status_code == 503


# --- NUL and control characters, strict ids -----------------------------------------------


@pytest.fixture
async def member_id(grocer: OnboardedPartner) -> str:
    member = await grocer.client.enrol_member(reference="card-1")
    await grocer.client.earn(member["member_id"], 500, reference="welcome")
    member_id: str = member["member_id"]
    return member_id


async def signed(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    clock: FrozenClock,
    method: str,
    path: str,
    *,
    query: str = "",
    body: Any = None,
) -> httpx.Response:
    raw = json_body(body) if body is not None else b""
    headers = sign_headers(grocer, clock, method, path, query=query, body=raw)
    return await client.request(method, url(path, query), content=raw, headers=headers)


@pytest.mark.parametrize(
    "change",
    [
        {"member_id": "mem_" + "0" * 31 + "\x00"},
        {"member_id": "\x00"},
        {"member_id": "mem_" + "0" * 32 + "\n"},
        {"reference": "order-1\x00"},
        {"reference": "order-1\n"},
        {"reference": "order-\u202e1"},
        {"reference": "order\u20281"},
        {"reference": "order-\x851"},
    ],
    ids=[
        "member-nul",
        "member-only-nul",
        "member-newline",
        "ref-nul",
        "ref-newline",
        "ref-bidi",
        "ref-line-separator",
        "ref-c1",
    ],
)
async def test_control_characters_in_a_body_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    change: dict[str, str],
) -> None:
    body = {"member_id": member_id, "points": 10, "reference": "order-1"} | change
    response = await signed(client, grocer, clock, "POST", "/v1/earn", body=body)
    assert_problem(response, 422, "validation_error")
    response = await signed(client, grocer, clock, "POST", "/v1/burn", body=body)
    assert_problem(response, 422, "validation_error")
    assert (await grocer.client.balance(member_id))["available"] == 500


@pytest.mark.parametrize("segment", ["%00", "mem_%00", "%0A", "x" * 300])
async def test_a_malformed_member_id_in_a_path_is_404(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, segment: str
) -> None:
    path = f"/v1/members/{segment}/balance"
    assert_problem(await signed(client, grocer, clock, "GET", path), 404, "member_not_found")
    path = f"/v1/members/{segment}/sessions"
    response = await signed(client, grocer, clock, "POST", path, body={})
    assert_problem(response, 404, "member_not_found")


async def test_malformed_ids_in_admin_and_settlement_paths_are_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], grocer: OnboardedPartner
) -> None:
    for path, code in [
        ("/v1/admin/partners/%00", "partner_not_found"),
        ("/v1/admin/partners/grocer%0A", "partner_not_found"),
        ("/v1/settlements/%00", "settlement_not_found"),
        ("/v1/settlements/%00/report.csv", "settlement_not_found"),
    ]:
        response = await client.get(url(path), headers=admin_headers)
        assert_problem(response, 404, code)
    response = await client.patch(
        url("/v1/admin/partners/%00"), json={"name": "x"}, headers=admin_headers
    )
    assert_problem(response, 404, "partner_not_found")
    response = await client.delete(url("/v1/admin/partners/grocer/keys/%00"), headers=admin_headers)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        "reference=%00",
        "reference=a%0A",
        "member_id=%00",
        "member_id=mem_x",
        "after=%00",
        "reference=" + "r" * 129,
    ],
)
async def test_a_malformed_query_filter_is_422(
    client: httpx.AsyncClient, grocer: OnboardedPartner, clock: FrozenClock, query: str
) -> None:
    response = await signed(client, grocer, clock, "GET", "/v1/transactions", query=query)
    assert_problem(response, 422, "validation_error")


async def test_a_settlement_cursor_with_a_nul_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(url("/v1/settlements", "after=%00"), headers=admin_headers)
    assert_problem(response, 422, "validation_error")


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("0001-01-01T00:00:00+14:00|" + "0" * 32),
        _cursor("9999-12-31T23:59:59-23:59|" + "0" * 32),
        _cursor("2026-11-23T10:00:00|" + "0" * 32),  # naive
        _cursor("2026-11-23T10:00:00+00:00|{" + "0" * 32 + "}"),
    ],
    ids=["year-1", "year-9999", "naive", "braced-uuid"],
)
async def test_a_crafted_cursor_is_422(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    cursor: str,
) -> None:
    query = f"after={cursor}"
    response = await signed(client, grocer, clock, "GET", "/v1/transactions", query=query)
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59", "1900-01-01T00:00:00Z"],
)
async def test_extreme_dates_are_422(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    admin_headers: dict[str, str],
    moment: str,
) -> None:
    for field in ("available_at", "expires_at"):
        body = {"member_id": member_id, "points": 10, "reference": "o-1", field: moment}
        response = await signed(client, grocer, clock, "POST", "/v1/earn", body=body)
        assert_problem(response, 422, "validation_error")
    response = await client.post(
        "/v1/admin/settlements", json={"period_end": moment}, headers=admin_headers
    )
    assert_problem(response, 422, "validation_error")
    assert (await grocer.client.balance(member_id))["available"] == 500


# --- the smaller ones -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"member_id": "%s", "points": 1, "points": 400, "reference": "o-1"}',
        b'{"member_id": "%s", "points": 1, "reference": "o-1", "\\u0070oints": 400}',
        b'{"member_id": "%s", "points": 1, "reference": "o-1", "reference": "o-2"}',
    ],
    ids=["plain", "escaped-name", "reference"],
)
async def test_a_body_naming_a_field_twice_is_422(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    raw: bytes,
) -> None:
    """The signed bytes must mean one thing: never the last of two values."""
    body = raw.replace(b"%s", member_id.encode())
    headers = sign_headers(grocer, clock, "POST", "/v1/burn", body=body)
    response = await client.post(url("/v1/burn"), content=body, headers=headers)
    problem = assert_problem(response, 422, "validation_error")
    assert "more than once" in problem["detail"]
    assert (await grocer.client.balance(member_id))["available"] == 500


async def test_a_nested_duplicate_and_an_admin_body_are_refused_too(
    client: httpx.AsyncClient, admin_headers: dict[str, str], grocer: OnboardedPartner
) -> None:
    body = b'{"credit_limit": {"amount": "1.00", "currency": "EUR", "amount": "9999.00"}}'
    response = await client.patch(
        "/v1/admin/partners/grocer",
        content=body,
        headers=admin_headers | {"Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation_error")
    # The same key in two different objects is fine.
    body = b'{"credit_limit": {"amount": "1.00", "currency": "EUR"}, "name": "amount"}'
    response = await client.patch(
        "/v1/admin/partners/grocer",
        content=body,
        headers=admin_headers | {"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


async def test_ready_reads_the_migration_scripts_at_most_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/ready is unauthenticated: each call used to re-read every migration script in
    the event loop (~13 ms). Count the reads of the scripts (not of the database)."""
    reads = 0
    original = ScriptDirectory.from_config

    def counting(*args: Any, **kwargs: Any) -> ScriptDirectory:
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(ScriptDirectory, "from_config", counting)
    for _ in range(20):
        response = await client.get("/ready")
        assert response.status_code == 200
    assert reads <= 1


@pytest.mark.parametrize("name", ["Grocer\nTotal", "Grocer\u202eRECNUF", "Grocer\x00"])
async def test_a_partner_name_with_control_characters_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], grocer: OnboardedPartner, name: str
) -> None:
    response = await client.patch(
        "/v1/admin/partners/grocer", json={"name": name}, headers=admin_headers
    )
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("name", [" =HYPERLINK(1)", "  +1+1", " @SUM(A1)", "\t-1"])
async def test_the_csv_report_neutralises_formulas_after_leading_spaces(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    finance_headers: dict[str, str],
    grocer: OnboardedPartner,
    clock: FrozenClock,
    name: str,
) -> None:
    member = (await grocer.client.enrol_member())["member_id"]
    await grocer.client.earn(member, 100, reference="o-1")
    renamed = await client.patch(
        "/v1/admin/partners/grocer", json={"name": name}, headers=admin_headers
    )
    if name.startswith("\t"):  # a tab is a control character: refused at the source
        assert_problem(renamed, 422, "validation_error")
        return
    assert renamed.status_code == 200, renamed.text
    clock.set(datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    run = await client.post(
        "/v1/admin/settlements",
        json={"period_end": "2026-11-24T00:00:00Z"},
        headers=admin_headers,
    )
    assert run.status_code == 201, run.text
    report = await client.get(
        f"/v1/settlements/{run.json()['run_id']}/report.csv", headers=finance_headers
    )
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert rows[0]["partner_name"] == "'" + name


async def test_a_member_token_is_never_stored_in_the_idempotency_record(
    client: httpx.AsyncClient,
    grocer: OnboardedPartner,
    member_id: str,
    clock: FrozenClock,
    engine: AsyncEngine,
) -> None:
    path = f"/v1/members/{member_id}/sessions"
    body = json_body({"ttl_seconds": 600})
    sent = {"Idempotency-Key": "session-1"}
    headers = sign_headers(grocer, clock, "POST", path, body=body, headers=sent)
    first = await client.post(url(path), content=body, headers=headers)
    assert first.status_code == 201, first.text
    token = first.json()["token"]
    async with engine.connect() as conn:
        stored = await conn.scalar(select(idempotency_keys.c.response))
    assert token.encode() not in stored
    assert token.removeprefix("xmt_").encode() not in stored

    headers = sign_headers(grocer, clock, "POST", path, body=body, headers=sent)
    again = await client.post(url(path), content=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotency-replayed"] == "true"
    assert again.json()["expires_at"] == first.json()["expires_at"]
    # Both tokens work for that member, until the one expiry.
    for bearer in (token, again.json()["token"]):
        response = await client.get(
            f"/v1/members/{member_id}/balance", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["available"] == 500
