"""Every posting keeps the partner's verified signature, re-verifiable years later (§2.1).

Postings are made through the real app with real signatures; the audit then re-verifies
what PostgreSQL stored, in-process (`partners.audit.verify_transaction`) and as an
operator runs it (`exchange audit verify-transaction TXN` in a subprocess).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.ids import parse_transaction_id
from partners.audit import AuditResult, verify_transaction
from partners.client import AsyncPartnerClient
from partners.registry import add_key, revoke_key
from partners.signing import generate_keypair
from tests.http.conftest import signing_client
from tests.support import add_partner


@pytest.fixture
async def grocer(
    app: Litestar, client: httpx.AsyncClient, engine: AsyncEngine, clock: FrozenClock
) -> AsyncIterator[tuple[AsyncPartnerClient, str]]:
    """A partner client signing with a registered key (the app runs for the test)."""
    await add_partner(engine, clock, "grocer", earn_rates={"EUR": "1"})
    private_key, public_key = generate_keypair()
    key = await add_key(engine, clock, "grocer", public_key)
    partner = signing_client(app, clock, key.key_id, private_key)
    yield partner, key.key_id
    await partner.aclose()


async def _earn(partner: AsyncPartnerClient) -> tuple[str, str]:
    member = await partner.enrol_member()
    earned = await partner.earn(member["member_id"], 120, reference="order-991")
    return member["member_id"], earned["transaction_id"]


async def test_a_signed_earn_verifies_with_the_stored_signature(
    grocer: tuple[AsyncPartnerClient, str], engine: AsyncEngine
) -> None:
    partner, key_id = grocer
    _, transaction_id = await _earn(partner)
    result = await verify_transaction(engine, transaction_id)
    assert result.valid is True
    assert (result.partner_id, result.key_id) == ("grocer", key_id)
    assert result.reason == "Ed25519 over the stored signature base, key active"
    assert result.signature_input is not None
    assert result.signature_input.startswith(
        'sig1=("@method" "@authority" "@path" "@query" "content-type" "content-digest" '
        '"idempotency-key");created=1795428000;keyid="' + key_id + '";nonce="'
    )
    assert result.content_digest is not None
    assert result.content_digest.startswith("sha-256=:")
    base = result.signature_base or ""
    lines = base.splitlines()
    assert lines[:4] == [
        '"@method": POST',
        '"@authority": exchange.test',
        '"@path": /v1/earn',
        '"@query": ?',
    ]
    assert lines[4] == '"content-type": application/json'
    assert lines[5] == f'"content-digest": {result.content_digest}'
    assert lines[-1] == '"@signature-params": ' + result.signature_input.removeprefix("sig1=")


async def test_signatures_stay_verifiable_after_the_key_is_revoked(
    grocer: tuple[AsyncPartnerClient, str], engine: AsyncEngine, clock: FrozenClock
) -> None:
    partner, key_id = grocer
    _, transaction_id = await _earn(partner)
    await revoke_key(engine, clock, "grocer", key_id)
    result = await verify_transaction(engine, transaction_id)
    assert result.valid is True
    assert result.reason == "Ed25519 over the stored signature base, key revoked since"


async def test_every_kind_of_posting_keeps_its_signature(
    grocer: tuple[AsyncPartnerClient, str], engine: AsyncEngine
) -> None:
    partner, _ = grocer
    member_id, earn_id = await _earn(partner)
    burn = await partner.burn(member_id, 20)
    reversal = await partner.reverse(earn_id, 10)
    hold = await partner.create_hold(member_id, 30)
    captured = await partner.capture_hold(hold["hold_id"], 25)
    for transaction_id, path in (
        (burn["transaction_id"], "/v1/burn"),
        (reversal["transaction_id"], f"/v1/transactions/{earn_id}/reversals"),
        (captured["transaction_id"], f"/v1/holds/{hold['hold_id']}/capture"),
    ):
        result = await verify_transaction(engine, transaction_id)
        assert result.valid, result.describe()
        assert f'"@path": {path}' in (result.signature_base or "")


async def test_unknown_and_malformed_transaction_ids_are_not_valid(engine: AsyncEngine) -> None:
    assert await verify_transaction(engine, "nonsense") == AuditResult(
        "nonsense", False, "not a transaction id"
    )
    unknown = "txn_" + "0" * 32
    assert await verify_transaction(engine, unknown) == AuditResult(
        unknown, False, "no stored signature for this transaction"
    )


async def test_a_tampered_stored_signature_base_is_reported_invalid(
    grocer: tuple[AsyncPartnerClient, str], engine: AsyncEngine
) -> None:
    partner, _ = grocer
    _, transaction_id = await _earn(partner)
    async with engine.begin() as conn:
        # The table is append-only; only a superuser switching triggers off can do this.
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text(
                "UPDATE postings SET signature_base = "
                "convert_to(replace(convert_from(signature_base, 'UTF8'), "
                "'\"@path\": /v1/earn', '\"@path\": /v1/burn'), 'UTF8') "
                "WHERE posting_id = :posting_id"
            ),
            {"posting_id": parse_transaction_id(transaction_id)},
        )
    result = await verify_transaction(engine, transaction_id)
    assert '"@path": /v1/burn' in (result.signature_base or "")
    assert result.valid is False
    assert "signature INVALID" in result.describe()


def _cli_env(database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    env |= {
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_LOG_LEVEL": "WARNING",
        "EXCHANGE_SCHEDULER_ENABLED": "false",
        "COLUMNS": "400",  # rich wraps at 80 columns otherwise
    }
    return env


async def _audit_cli(database_url: str, transaction_id: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange",
        "audit",
        "verify-transaction",
        transaction_id,
        env=_cli_env(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_the_audit_cli_verifies_a_transaction(
    grocer: tuple[AsyncPartnerClient, str], engine: AsyncEngine, database_url: str
) -> None:
    partner, key_id = grocer
    _, transaction_id = await _earn(partner)
    code, output = await _audit_cli(database_url, transaction_id)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == (
        f"{transaction_id}: signature VALID (Ed25519 over the stored signature base, key active)"
    )
    assert lines[1] == f"partner grocer, key {key_id}"
    assert lines[2].startswith('Signature-Input: sig1=("@method" "@authority" "@path" "@query"')
    assert lines[3].startswith("Content-Digest: sha-256=:")
    assert lines[4] == "signature base:"
    assert lines[5:9] == [
        '"@method": POST',
        '"@authority": exchange.test',
        '"@path": /v1/earn',
        '"@query": ?',
    ]

    code, output = await _audit_cli(database_url, "txn_" + "0" * 32)
    assert code == 1
    assert "no stored signature" in output
