"""The served OpenAPI document is the contract (issue 14): it validates, describes every
request body, every problem+json error with its codes and the security schemes, and is
committed byte-for-byte as docs/openapi.json.

Regenerate the committed file after changing an endpoint:

    EXCHANGE_UPDATE_OPENAPI=1 pytest tests/http/test_openapi.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar, get
from litestar.openapi import OpenAPIConfig
from openapi_spec_validator import validate

from exchange.errors import InsufficientPoints
from exchange.openapi import ContractRenderPlugin, api, document

DOCS_OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SCHEMA_URL = "/schema/openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")

# Every handler that decodes a body (decode_body), by operation: the 12 and the
# two operator POSTs added since (payments, adjustments).
BODIES = {
    ("post", "/v1/members"): "MemberCreate",
    ("post", "/v1/members/{member_id}/sessions"): "SessionCreate",
    ("post", "/v1/earn"): "EarnCreate",
    ("post", "/v1/burn"): "BurnCreate",
    ("post", "/v1/holds"): "HoldCreate",
    ("post", "/v1/holds/{hold_id}/capture"): "HoldCapture",
    ("post", "/v1/holds/{hold_id}/void"): "EmptyBody",
    ("post", "/v1/transactions/{transaction_id}/reversals"): "ReversalCreate",
    ("post", "/v1/admin/partners"): "PartnerCreate",
    ("patch", "/v1/admin/partners/{partner_id}"): "PartnerUpdate",
    ("post", "/v1/admin/partners/{partner_id}/keys"): "KeyCreate",
    ("post", "/v1/admin/settlements"): "SettlementCreate",
    ("post", "/v1/payments"): "PaymentCreate",
    ("post", "/v1/adjustments"): "AdjustmentCreate",
    ("post", "/v1/members/{member_id}/transfers"): "TransferCreate",
    ("post", "/v1/batches"): "BatchUpload",
    ("put", "/v1/webhook"): "WebhookSubscription",
}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def problem_codes(operation: dict[str, Any], status: int) -> list[str]:
    content = operation["responses"][str(status)]["content"]["application/problem+json"]
    codes: list[str] = content["schema"]["allOf"][1]["properties"]["code"]["enum"]
    return codes


@pytest.fixture
async def served(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get(SCHEMA_URL)
    assert response.status_code == 200
    return response


async def test_the_served_document_is_a_valid_openapi_document(served: httpx.Response) -> None:
    doc = served.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert len(operations(doc)) >= 39


async def test_every_request_body_is_described(served: httpx.Response) -> None:
    doc = served.json()
    described = {
        key: op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for key, op in operations(doc).items()
        if "requestBody" in op
    }
    assert described == {key: f"#/components/schemas/{name}" for key, name in BODIES.items()}, (
        "a handler that decodes a body must declare it: opt=api(body=...)"
    )
    earn = doc["components"]["schemas"]["EarnCreate"]
    assert earn["required"] == ["member_id", "reference"]
    assert earn["properties"]["member_id"]["pattern"] == r"\Amem_[0-9a-f]{32}\Z"
    example = operations(doc)[("post", "/v1/earn")]["requestBody"]["content"]
    assert example["application/json"]["example"]["points"] == 500


async def test_errors_are_problem_json_with_their_codes(served: httpx.Response) -> None:
    doc = served.json()
    ops = operations(doc)
    burn = ops[("post", "/v1/burn")]
    assert problem_codes(burn, 422) == [
        "idempotency_key_reused",
        "insufficient_points",
        "validation_error",
    ]
    assert "signature_invalid" in problem_codes(burn, 401)
    assert "nonce_replayed" in problem_codes(burn, 401)
    assert problem_codes(burn, 400) == ["bad_request", "idempotency_key_missing"]
    assert problem_codes(burn, 415) == ["unsupported_media_type"]
    assert problem_codes(ops[("get", "/v1/holds/{hold_id}")], 404) == ["hold_not_found"]
    assert problem_codes(ops[("post", "/v1/adjustments/{adjustment_id}/approval")], 403) == [
        "four_eyes_required",
        "partner_terminated",
    ]
    # Every operation but liveness may find the database away, busy or a row held: a 503
    # to retry after Retry-After, which a generated client must know to expect.
    for (method, path), operation in ops.items():
        if path == "/health":
            assert "503" not in operation["responses"]
        else:
            assert problem_codes(operation, 503) == ["service_unavailable"], (method, path)
            assert "Retry-After" in operation["responses"]["503"]["headers"], (method, path)
    assert "Retry-After" in burn["responses"]["429"]["headers"]
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    for (method, path), operation in ops.items():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == ["application/problem+json"], (method, path)
        # litestar's own default 400 (a ValidationException body) is never documented
        assert "ValidationException" not in str(operation), (method, path)


async def test_security_schemes_and_parameter_patterns(served: httpx.Response) -> None:
    doc = served.json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["partnerSignature"] == schemes["partnerSignature"] | {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
    }
    assert "RFC 9421" in schemes["partnerSignature"]["description"]
    assert schemes["operatorBearer"]["scheme"] == schemes["memberBearer"]["scheme"] == "bearer"
    ops = operations(doc)
    assert ops[("post", "/v1/earn")]["security"] == [{"partnerSignature": []}]
    assert ops[("get", "/v1/admin/partners")]["security"] == [{"operatorBearer": []}]
    # only admin endpoints can refuse a (finance) operator token
    assert problem_codes(ops[("post", "/v1/admin/partners")], 403) == ["forbidden"]
    assert "403" not in ops[("get", "/v1/admin/partners")]["responses"]
    assert ops[("get", "/v1/members/{member_id}/transactions")]["security"] == [
        {"memberBearer": []}
    ]
    assert ops[("get", "/v1/members/{member_id}/balance")]["security"] == [
        {"partnerSignature": []},
        {"memberBearer": []},
    ]
    assert "security" not in ops[("get", "/health")]
    hold = {p["name"]: p for p in ops[("post", "/v1/holds/{hold_id}/capture")]["parameters"]}
    assert re.fullmatch(hold["hold_id"]["schema"]["pattern"], "hold_" + "a" * 32)
    assert not re.fullmatch(hold["hold_id"]["schema"]["pattern"], "txn_" + "a" * 32)
    assert hold["Idempotency-Key"]["required"] is True
    assert hold["Idempotency-Key"]["schema"]["maxLength"] == 255
    limit = {p["name"]: p for p in ops[("get", "/v1/transactions")]["parameters"]}["limit"]
    assert limit["schema"]["minimum"] == 1
    assert limit["schema"]["maximum"] == 200


async def test_docs_openapi_json_is_what_the_server_serves(served: httpx.Response) -> None:
    if os.environ.get("EXCHANGE_UPDATE_OPENAPI") == "1":
        DOCS_OPENAPI.write_bytes(served.content)
    assert DOCS_OPENAPI.exists(), "run: EXCHANGE_UPDATE_OPENAPI=1 pytest tests/http/test_openapi.py"
    assert served.content == DOCS_OPENAPI.read_bytes(), (
        "docs/openapi.json is stale: EXCHANGE_UPDATE_OPENAPI=1 pytest tests/http/test_openapi.py"
    )


class _Thing(msgspec.Struct, frozen=True):
    name: str


def test_a_handler_without_its_api_record_is_refused() -> None:
    @get("/declared", opt=api(errors=(InsufficientPoints,)))
    async def declared() -> _Thing:
        return _Thing("a")

    @get("/forgotten")
    async def forgotten() -> _Thing:
        return _Thing("b")

    good = Litestar([declared], openapi_config=_config())
    assert document(good)["paths"]["/declared"]["get"]["responses"]["422"]
    bad = Litestar([declared, forgotten], openapi_config=_config())
    with pytest.raises(RuntimeError, match="GET /forgotten"):
        document(bad)


class _Described(msgspec.Struct, frozen=True):
    """A body whose description runs
    over two lines, indented as source is."""

    name: str


def test_a_struct_description_is_its_docstring_without_the_indentation() -> None:
    """msgspec 0.22 kept the indentation of a docstring's later lines and 0.23 removes
    it; the document must not depend on which one is installed."""

    @get("/described", opt=api(body=_Described, responses={200: _Described}))
    async def described() -> _Described:
        return _Described("a")

    schemas = document(Litestar([described], openapi_config=_config()))["components"]["schemas"]
    assert schemas["_Described"]["description"] == (
        "A body whose description runs\nover two lines, indented as source is."
    )


def _config() -> OpenAPIConfig:
    return OpenAPIConfig(title="t", version="1", render_plugins=[ContractRenderPlugin()])
