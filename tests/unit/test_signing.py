"""The coalition-v1 RFC 9421 profile: the RFC's own example, round trips, and every rule.

Requests that break a rule are signed *validly* (by `oracle_sign`, an independent
ten-line implementation of RFC 9421 §2.5 kept here as a test oracle), so each test proves
that the rule itself rejects the request, not the cryptography.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.errors import ExchangeError, Forbidden, Unauthorized
from partners import client, errors, signing
from partners.errors import (
    DigestMismatch,
    KeyRevoked,
    KeyUnknown,
    NonceReplayed,
    PartnerSuspended,
    SignatureExpired,
    SignatureInsufficient,
    SignatureInvalid,
    SignatureMissing,
)
from partners.signing import (
    SIGNATURE_TAG,
    IncomingRequest,
    KeyRecord,
    VerifiedSignature,
    b64url_decode,
    b64url_encode,
    content_digest,
    decode_public_key,
    decode_signature_member,
    generate_keypair,
    load_private_key,
    parse_signature_headers,
    public_key_b64url,
    sign_components,
    sign_request,
    signature_base,
    verify_message_signature,
    verify_request,
    verify_signature_base,
)

AUTHORITY = "exchange.test"
NOW = 1_800_000_000
KEY_ID = "key_1"
PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = b64url_decode(public_key_b64url(PRIVATE_KEY))
NONCE = "n" * 24
BODY = b'{"member_id":"mem_01","points":120,"reference":"order-991"}'

# RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2.6.
RFC_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_PUBLIC_KEY = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
RFC_HEADERS = [
    ("host", "example.com"),
    ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("content-type", "application/json"),
    (
        "content-digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("content-length", "18"),
]
RFC_SIGNATURE_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_SIGNATURE = (
    "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwU"
    "Piu4A0w6vuQv5lIp5WPpBKRCw==:"
)
RFC_SIGNATURE_BASE = b"""\
"date": Tue, 20 Apr 2021 02:07:55 GMT
"@method": POST
"@path": /foo
"@authority": example.com
"content-type": application/json
"content-length": 18
"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")\
;created=1618884473;keyid="test-key-ed25519\""""


class Registry:
    """Keys and nonces in memory, with call counts."""

    def __init__(self, *, key_active: bool = True, partner_active: bool = True) -> None:
        self.keys = {KEY_ID: KeyRecord(KEY_ID, "partner_a", PUBLIC_KEY, key_active, partner_active)}
        self.nonces: set[tuple[str, str]] = set()
        self.lookups = 0
        self.recorded: list[tuple[str, str, int]] = []

    async def resolve_key(self, key_id: str) -> KeyRecord | None:
        self.lookups += 1
        return self.keys.get(key_id)

    async def record_nonce(self, key_id: str, nonce: str, created: int) -> bool:
        self.recorded.append((key_id, nonce, created))
        if (key_id, nonce) in self.nonces:
            return False
        self.nonces.add((key_id, nonce))
        return True


async def verify(
    request: IncomingRequest, registry: Registry | None = None, *, now: int = NOW
) -> VerifiedSignature:
    registry = registry or Registry()
    return await verify_request(
        request,
        authority=AUTHORITY,
        now=now,
        resolve_key=registry.resolve_key,
        record_nonce=registry.record_nonce,
    )


def signed(
    method: str = "POST",
    path: str = "/v1/earn",
    query: str = "",
    body: bytes = BODY,
    *,
    created: int = NOW,
    nonce: str = NONCE,
    headers: dict[str, str] | None = None,
) -> IncomingRequest:
    """A request signed by `sign_request`, as the HTTP layer would hand it over."""
    fields = dict(headers or {})
    if body:
        fields.setdefault("Content-Type", "application/json")
    if method == "POST":
        fields.setdefault("Idempotency-Key", "idem-1")
    url = f"https://{AUTHORITY}{path}" + (f"?{query}" if query else "")
    fields |= sign_request(
        method=method,
        url=url,
        headers=fields,
        body=body,
        key_id=KEY_ID,
        private_key=PRIVATE_KEY,
        created=created,
        nonce=nonce,
    )
    lines = [(name.lower(), value) for name, value in fields.items()]
    return IncomingRequest(method, path, query, lines, body)


def unsigned(
    method: str = "POST", path: str = "/v1/earn", query: str = "", body: bytes = BODY
) -> IncomingRequest:
    lines = [("content-type", "application/json"), ("idempotency-key", "idem-1")]
    if body:
        lines.append(("content-digest", content_digest(body)))
    return IncomingRequest(method, path, query, lines, body)


FULL = ("@method", "@authority", "@path", "@query", "content-type", "content-digest")
POST_FULL = (*FULL, "idempotency-key")


def params(**overrides: object) -> str:
    values: dict[str, object] = {
        "created": NOW,
        "keyid": KEY_ID,
        "nonce": NONCE,
        "tag": SIGNATURE_TAG,
    } | overrides
    out = ""
    for name, value in values.items():
        if value is not None:
            out += f";{name}={value}" if isinstance(value, int) else f';{name}="{value}"'
    return out


def oracle_sign(
    request: IncomingRequest,
    components: Sequence[str] = POST_FULL,
    parameters: str | None = None,
    *,
    label: str = "sig1",
    authority: str = AUTHORITY,
) -> IncomingRequest:
    """RFC 9421 §2.5, written independently of `partners.signing`: a test oracle."""
    derived = {
        "@method": request.method,
        "@authority": authority,
        "@path": request.path,
        "@query": "?" + request.query,
    }
    header = dict(request.headers)
    inner = "(" + " ".join(f'"{name}"' for name in components) + ")"
    inner += params() if parameters is None else parameters
    lines = [f'"{c}": {derived[c] if c.startswith("@") else header[c].strip()}' for c in components]
    base = "\n".join([*lines, f'"@signature-params": {inner}']).encode()
    signature = base64.b64encode(PRIVATE_KEY.sign(base)).decode()
    extra = [("signature-input", f"{label}={inner}"), ("signature", f"{label}=:{signature}:")]
    return IncomingRequest(
        request.method, request.path, request.query, [*request.headers, *extra], request.body
    )


def replace_header(request: IncomingRequest, name: str, value: str) -> IncomingRequest:
    lines = [(n, value if n == name else v) for n, v in request.headers]
    return IncomingRequest(request.method, request.path, request.query, lines, request.body)


def add_header(request: IncomingRequest, name: str, value: str) -> IncomingRequest:
    lines = [*request.headers, (name, value)]
    return IncomingRequest(request.method, request.path, request.query, lines, request.body)


def rfc_request() -> IncomingRequest:
    headers = [*RFC_HEADERS, ("signature-input", RFC_SIGNATURE_INPUT)]
    headers.append(("signature", RFC_SIGNATURE))
    return IncomingRequest("POST", "/foo", "param=Value&Pet=dog", headers, b'{"hello": "world"}')


# --- RFC 9421 Appendix B.2.6 ---------------------------------------------------------------


def test_rfc9421_b26_ed25519_example_verifies() -> None:
    result = verify_message_signature(
        rfc_request(), authority="example.com", public_key=decode_public_key(RFC_PUBLIC_KEY)
    )
    assert result.signature_base == RFC_SIGNATURE_BASE
    assert result.label == "sig-b26"
    assert result.signature_input == RFC_SIGNATURE_INPUT
    assert result.signature == RFC_SIGNATURE


def test_rfc9421_b26_digest_is_sha512_of_the_body() -> None:
    assert signing.check_content_digest(rfc_request()) == RFC_HEADERS[3][1]


def test_rfc9421_b26_signer_reproduces_the_published_signature() -> None:
    private_key = load_pem_private_key(RFC_PRIVATE_PEM, password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    assert public_key_b64url(private_key) == RFC_PUBLIC_KEY
    added = sign_components(
        method="POST",
        authority="example.com",
        path="/foo",
        query="param=Value&Pet=dog",
        headers=dict(RFC_HEADERS),
        components=("date", "@method", "@path", "@authority", "content-type", "content-length"),
        key_id="test-key-ed25519",
        private_key=private_key,
        created=1618884473,
        nonce=None,
        tag=None,
        label="sig-b26",
    )
    assert added == {"Signature-Input": RFC_SIGNATURE_INPUT, "Signature": RFC_SIGNATURE}


def test_rfc9421_b26_fails_when_a_covered_value_changes() -> None:
    request = replace_header(rfc_request(), "date", "Tue, 20 Apr 2021 02:07:56 GMT")
    with pytest.raises(SignatureInvalid):
        verify_message_signature(
            request, authority="example.com", public_key=decode_public_key(RFC_PUBLIC_KEY)
        )


def test_rfc9421_b26_fails_under_another_authority() -> None:
    with pytest.raises(SignatureInvalid, match=r"example\.org"):
        verify_message_signature(
            rfc_request(), authority="example.org", public_key=decode_public_key(RFC_PUBLIC_KEY)
        )


# --- round trips ----------------------------------------------------------------------------


async def test_signed_post_verifies_and_is_stored_re_verifiable() -> None:
    registry = Registry()
    verified = await verify(signed(), registry)
    assert verified.key_id == KEY_ID
    assert verified.partner_id == "partner_a"
    assert (verified.label, verified.created, verified.nonce) == ("sig1", NOW, NONCE)
    assert verified.content_digest == content_digest(BODY)
    assert verified.signature_input.startswith(
        'sig1=("@method" "@authority" "@path" "@query" "content-type" "content-digest" '
        '"idempotency-key");created=1800000000;keyid="key_1"'
    )
    assert b'"@authority": exchange.test\n"@path": /v1/earn\n"@query": ?\n' in (
        verified.signature_base
    )
    raw = decode_signature_member(verified.signature)
    assert verify_signature_base(verified.signature_base, raw, PUBLIC_KEY)
    assert not verify_signature_base(verified.signature_base + b" ", raw, PUBLIC_KEY)
    assert registry.recorded == [(KEY_ID, NONCE, NOW)]


async def test_get_without_body_needs_no_digest() -> None:
    request = signed("GET", "/v1/transactions", "member_id=mem_01&limit=10", b"")
    assert "content-digest" not in dict(request.headers)
    verified = await verify(request)
    assert verified.content_digest is None
    assert '"content-type"' not in verified.signature_input
    assert b'"@query": ?member_id=mem_01&limit=10\n' in verified.signature_base


async def test_parameters_in_another_order_verify() -> None:
    reordered = f';nonce="{NONCE}";tag="{SIGNATURE_TAG}";keyid="{KEY_ID}";created={NOW}'
    verified = await verify(oracle_sign(unsigned(), parameters=reordered))
    assert verified.signature_input.endswith(reordered)


async def test_components_in_any_order_and_extra_headers_verify() -> None:
    request = add_header(unsigned(), "x-till", "till-7")
    components = ("x-till", "idempotency-key", *reversed(FULL))
    assert (await verify(oracle_sign(request, components))).nonce == NONCE


async def test_header_values_are_trimmed_as_rfc9421_requires() -> None:
    request = replace_header(signed(), "idempotency-key", "  idem-1\t")
    await verify(request)


# --- tampering ------------------------------------------------------------------------------


async def test_tampered_body_is_a_digest_mismatch() -> None:
    request = signed()
    tampered = IncomingRequest(
        request.method, request.path, request.query, request.headers, BODY.replace(b"120", b"999")
    )
    with pytest.raises(DigestMismatch, match="sha-256"):
        await verify(tampered)


async def test_tampered_body_with_a_recomputed_digest_fails_the_signature() -> None:
    request = signed()
    body = BODY.replace(b"120", b"999")
    tampered = replace_header(request, "content-digest", content_digest(body))
    tampered = IncomingRequest(tampered.method, tampered.path, "", tampered.headers, body)
    with pytest.raises(SignatureInvalid):
        await verify(tampered)


@pytest.mark.parametrize(
    ("path", "query", "header"),
    [
        ("/v1/burn", "", None),
        ("/v1/earn", "x=1", None),
        ("/v1/earn", "", ("idempotency-key", "idem-2")),
        ("/v1/earn", "", ("content-type", "text/plain")),
    ],
    ids=["path", "query", "idempotency-key", "content-type"],
)
async def test_tampered_covered_component_fails(
    path: str, query: str, header: tuple[str, str] | None
) -> None:
    request = signed()
    request = IncomingRequest(request.method, path, query, request.headers, request.body)
    if header:
        request = replace_header(request, *header)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        await verify(request)


async def test_signature_for_another_authority_fails() -> None:
    with pytest.raises(SignatureInvalid, match=f'"{AUTHORITY}"'):
        await verify(oracle_sign(unsigned(), authority="exchange.example"))


async def test_failed_signature_does_not_consume_the_nonce() -> None:
    registry = Registry()
    request = replace_header(signed(), "idempotency-key", "idem-2")
    with pytest.raises(SignatureInvalid):
        await verify(request, registry)
    assert registry.recorded == []
    await verify(signed(), registry)


# --- percent-encoded paths -------------------------------------------------------------------


async def test_percent_encoded_path_is_signed_and_verified_exactly_as_sent() -> None:
    request = signed("GET", "/v1/members/mem%2F01/balance", body=b"")
    verified = await verify(request)
    assert b'"@path": /v1/members/mem%2F01/balance\n' in verified.signature_base
    decoded = IncomingRequest("GET", "/v1/members/mem/01/balance", "", request.headers, b"")
    with pytest.raises(SignatureInvalid):
        await verify(decoded)
    lower = IncomingRequest("GET", "/v1/members/mem%2f01/balance", "", request.headers, b"")
    with pytest.raises(SignatureInvalid):
        await verify(lower)


# --- header rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["idempotency-key", "content-type", "content-digest"])
async def test_covered_header_sent_twice_is_invalid(name: str) -> None:
    request = signed()
    request = add_header(request, name, dict(request.headers)[name])
    with pytest.raises(SignatureInvalid, match="appears 2 times"):
        await verify(request)


async def test_covered_header_absent_is_invalid() -> None:
    request = oracle_sign(add_header(unsigned(), "x-till", "7"), (*POST_FULL, "x-till"))
    request = IncomingRequest(
        request.method,
        request.path,
        request.query,
        [line for line in request.headers if line[0] != "x-till"],
        request.body,
    )
    with pytest.raises(SignatureInvalid, match="appears 0 times"):
        await verify(request)


@pytest.mark.parametrize("missing", POST_FULL)
async def test_signature_covering_too_little_is_insufficient(missing: str) -> None:
    components = [name for name in POST_FULL if name != missing]
    with pytest.raises(SignatureInsufficient, match=f'"{missing}"'):
        await verify(oracle_sign(unsigned(), components))


async def test_get_need_not_cover_body_headers_or_idempotency_key() -> None:
    request = oracle_sign(unsigned("GET", body=b""), ("@method", "@authority", "@path", "@query"))
    await verify(request)


async def test_body_without_content_digest_is_insufficient() -> None:
    request = unsigned()
    lines = [line for line in request.headers if line[0] != "content-digest"]
    request = IncomingRequest("POST", "/v1/earn", "", lines, BODY)
    components = [c for c in POST_FULL if c != "content-digest"]
    with pytest.raises(SignatureInsufficient, match="Content-Digest"):
        await verify(oracle_sign(request, components))


@pytest.mark.parametrize("component", ['"content-type";sf', '"content-digest";key="sha-256"'])
async def test_component_parameters_are_outside_the_profile(component: str) -> None:
    request = signed()
    value = dict(request.headers)["signature-input"].replace(
        f'"{component.split(";", maxsplit=1)[0][1:-1]}"', component
    )
    with pytest.raises(SignatureInvalid, match="component parameters"):
        await verify(replace_header(request, "signature-input", value))


async def test_other_derived_components_are_outside_the_profile() -> None:
    request = signed()
    value = dict(request.headers)["signature-input"].replace('"@query"', '"@query" "@target-uri"')
    with pytest.raises(SignatureInvalid, match="@target-uri"):
        await verify(replace_header(request, "signature-input", value))


# --- digests --------------------------------------------------------------------------------


def _digest(name: str, body: bytes) -> str:
    return (
        f"{name}=:{base64.b64encode(hashlib.new(name.replace('-', ''), body).digest()).decode()}:"
    )


def with_digest(value: str) -> IncomingRequest:
    request = replace_header(unsigned(), "content-digest", value)
    return oracle_sign(request)


async def test_sha512_digest_is_accepted() -> None:
    verified = await verify(with_digest(_digest("sha-512", BODY)))
    assert verified.content_digest == _digest("sha-512", BODY)


async def test_both_digests_must_match() -> None:
    await verify(with_digest(f"{_digest('sha-256', BODY)}, {_digest('sha-512', BODY)}"))
    wrong = _digest("sha-512", b"other")
    with pytest.raises(DigestMismatch, match="sha-512"):
        await verify(with_digest(f"{_digest('sha-256', BODY)}, {wrong}"))


async def test_unknown_digest_algorithms_are_ignored_but_not_enough() -> None:
    await verify(with_digest(f"md5=:AAAA:, {_digest('sha-256', BODY)}"))
    with pytest.raises(DigestMismatch, match="sha-256 or sha-512"):
        await verify(with_digest("md5=:AAAA:"))


@pytest.mark.parametrize("value", ["sha-256=abc", "sha-256=:!!:", "not a dictionary ("])
async def test_malformed_digest_is_a_mismatch(value: str) -> None:
    with pytest.raises(DigestMismatch):
        await verify(with_digest(value))


# --- parameters and window ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "ok"),
    [(NOW - 300, True), (NOW - 301, False), (NOW + 30, True), (NOW + 31, False)],
    ids=["300s-old", "301s-old", "30s-ahead", "31s-ahead"],
)
async def test_created_window_boundaries(created: int, ok: bool) -> None:
    request = signed(created=created)
    if ok:
        assert (await verify(request)).created == created
    else:
        with pytest.raises(SignatureExpired):
            await verify(request)


async def test_expired_detail_helps_the_partner() -> None:
    with pytest.raises(SignatureExpired) as raised:
        await verify(signed(created=NOW - 412))
    assert raised.value.detail == "created is 412 s old; the window is 300 s"


@pytest.mark.parametrize(("expires", "ok"), [(NOW + 60, True), (NOW, False), (NOW - 1, False)])
async def test_expires_must_not_have_passed(expires: int, ok: bool) -> None:
    request = oracle_sign(unsigned(), parameters=params(expires=expires))
    if ok:
        await verify(request)
    else:
        with pytest.raises(SignatureExpired, match="expires"):
            await verify(request)


async def test_alg_ed25519_is_accepted_and_anything_else_refused() -> None:
    await verify(oracle_sign(unsigned(), parameters=params(alg="ed25519")))
    with pytest.raises(SignatureInvalid, match="alg"):
        await verify(oracle_sign(unsigned(), parameters=params(alg="rsa-pss-sha512")))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tag": "other-v1"}, "tag"),
        ({"tag": None}, "tag"),
        ({"nonce": None}, "nonce"),
        ({"keyid": None}, "keyid"),
        ({"created": None}, "created"),
        ({"created": str(NOW)}, "created"),
        ({"keyid": ""}, "keyid"),
        ({"nonce": "n" * 15}, "nonce is 15 characters"),
        ({"nonce": "n" * 129}, "nonce is 129 characters"),
        ({"context": "x"}, "unknown signature parameter"),
    ],
)
async def test_bad_parameters_are_invalid(overrides: dict[str, object], match: str) -> None:
    registry = Registry()
    with pytest.raises(SignatureInvalid, match=match):
        await verify(oracle_sign(unsigned(), parameters=params(**overrides)), registry)
    assert registry.lookups == 0


@pytest.mark.parametrize("length", [16, 128])
async def test_nonce_length_bounds_are_inclusive(length: int) -> None:
    nonce = "n" * length
    assert (await verify(oracle_sign(unsigned(), parameters=params(nonce=nonce)))).nonce == nonce


async def test_cheap_checks_come_before_the_key_lookup() -> None:
    registry = Registry()
    with pytest.raises(SignatureExpired):
        await verify(signed(created=NOW - 1000), registry)
    with pytest.raises(DigestMismatch):
        await verify(IncomingRequest(**_with_body(signed(), b"{}")), registry)
    assert registry.lookups == 0


def _with_body(request: IncomingRequest, body: bytes) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": request.headers,
        "body": body,
    }


# --- keys and replay ------------------------------------------------------------------------


async def test_unknown_key() -> None:
    registry = Registry()
    registry.keys.clear()
    with pytest.raises(KeyUnknown, match="key_1"):
        await verify(signed(), registry)


async def test_revoked_key() -> None:
    with pytest.raises(KeyRevoked):
        await verify(signed(), Registry(key_active=False))


async def test_suspended_partner_is_forbidden() -> None:
    with pytest.raises(PartnerSuspended) as raised:
        await verify(signed(), Registry(partner_active=False))
    assert raised.value.status == 403


async def test_replayed_nonce() -> None:
    registry = Registry()
    await verify(signed(), registry)
    with pytest.raises(NonceReplayed):
        await verify(signed(), registry)
    await verify(signed(nonce="another-nonce-1234"), registry)


async def test_nonce_store_failure_propagates() -> None:
    async def broken(key_id: str, nonce: str, created: int) -> bool:
        raise ConnectionError("nonce store down")

    with pytest.raises(ConnectionError):
        await verify_request(
            signed(),
            authority=AUTHORITY,
            now=NOW,
            resolve_key=Registry().resolve_key,
            record_nonce=broken,
        )


# --- header structure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "drop", [("signature",), ("signature-input",), ("signature", "signature-input")]
)
async def test_missing_headers(drop: tuple[str, ...]) -> None:
    request = signed()
    lines = [line for line in request.headers if line[0] not in drop]
    with pytest.raises(SignatureMissing):
        await verify(IncomingRequest("POST", "/v1/earn", "", lines, BODY))


async def test_two_signatures_are_invalid() -> None:
    first, second = signed(), signed(nonce="second-nonce-12345")
    fields, other = dict(first.headers), dict(second.headers)
    request = replace_header(
        first,
        "signature-input",
        f"{fields['signature-input']}, {other['signature-input'].replace('sig1=', 'sig2=')}",
    )
    request = replace_header(
        request,
        "signature",
        f"{fields['signature']}, {other['signature'].replace('sig1=', 'sig2=')}",
    )
    with pytest.raises(SignatureInvalid, match="exactly one signature; it holds 2"):
        await verify(request)


async def test_signature_header_sent_twice_is_invalid() -> None:
    request = signed()
    request = add_header(request, "signature-input", dict(request.headers)["signature-input"])
    with pytest.raises(SignatureInvalid, match="exactly once"):
        await verify(request)


async def test_mismatched_labels_are_invalid() -> None:
    request = signed()
    value = dict(request.headers)["signature"].replace("sig1=", "sig2=")
    with pytest.raises(SignatureInvalid, match="labels differ"):
        await verify(replace_header(request, "signature", value))


@pytest.mark.parametrize(
    "value",
    [
        "sig1=",
        "sig1=(",
        'sig1=("@method" @path)',
        'sig1=("@METHOD")',
        'sig1=("@path" "@path")',
        'sig1=("@signature-params")',
        "sig1=:AAAA:",
    ],
)
async def test_malformed_signature_input_is_invalid(value: str) -> None:
    with pytest.raises(SignatureInvalid):
        await verify(replace_header(signed(), "signature-input", value))


async def test_oversized_signature_input_is_invalid() -> None:
    request = signed()
    value = dict(request.headers)["signature-input"] + ";x=" + '"' + "a" * 9000 + '"'
    with pytest.raises(SignatureInvalid, match="longer than 8192"):
        await verify(replace_header(request, "signature-input", value))


async def test_wrong_length_signature_is_invalid() -> None:
    with pytest.raises(SignatureInvalid, match="64-byte"):
        await verify(replace_header(signed(), "signature", "sig1=:AAAA:"))


async def test_error_details_never_contain_the_signature_base_or_keys() -> None:
    request = replace_header(signed(), "idempotency-key", "idem-2")
    with pytest.raises(SignatureInvalid) as raised:
        await verify(request)
    text = str(raised.value)
    assert "@signature-params" not in text
    assert public_key_b64url(PRIVATE_KEY) not in text
    assert "exactly as sent" in text  # says how to fix it, not what the base was


# --- signing helpers and keys ---------------------------------------------------------------


def test_sign_request_refuses_posts_without_idempotency_key_or_content_type() -> None:
    url = f"https://{AUTHORITY}/v1/earn"
    for headers, missing in [
        ({"Content-Type": "application/json"}, "Idempotency-Key"),
        ({"Idempotency-Key": "k"}, "Content-Type"),
    ]:
        with pytest.raises(ValueError, match=missing):
            sign_request(
                method="POST",
                url=url,
                headers=headers,
                body=BODY,
                key_id=KEY_ID,
                private_key=PRIVATE_KEY,
            )


def test_sign_request_uses_the_wire_authority_and_raw_path() -> None:
    added = sign_request(
        method="GET",
        url="https://Exchange.Test:443/v1/members/a%2Fb/balance?x=%7E",
        headers={},
        body=None,
        key_id=KEY_ID,
        private_key=PRIVATE_KEY,
        created=NOW,
        nonce=NONCE,
    )
    request = IncomingRequest(
        "GET",
        "/v1/members/a%2Fb/balance",
        "x=%7E",
        [(name.lower(), value) for name, value in added.items()],
        b"",
    )
    assert set(added) == {"Signature-Input", "Signature"}
    verified = verify_message_signature(request, authority=AUTHORITY, public_key=PUBLIC_KEY)
    assert b'"@query": ?x=%7E\n' in verified.signature_base


def test_keypair_round_trip() -> None:
    private, public = generate_keypair()
    key = load_private_key(private)
    assert public_key_b64url(key) == public
    assert decode_public_key(public) == key.public_key().public_bytes_raw()
    assert "=" not in private + public


@pytest.mark.parametrize("text", ["AAAA", "not base64!", b64url_encode(bytes(31))])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"base64url|32 raw bytes"):
        decode_public_key(text)
    with pytest.raises(ValueError, match=r"base64url|32 raw bytes"):
        load_private_key(text)


def test_content_digest_is_rfc9530_sha256() -> None:
    expected = base64.b64encode(hashlib.sha256(b"{}").digest()).decode()
    assert content_digest(b"{}") == f"sha-256=:{expected}:"


# --- the error tree -------------------------------------------------------------------------

CODES = {
    SignatureMissing: ("signature_missing", 401),
    SignatureInvalid: ("signature_invalid", 401),
    SignatureExpired: ("signature_expired", 401),
    SignatureInsufficient: ("signature_insufficient", 401),
    DigestMismatch: ("digest_mismatch", 401),
    KeyUnknown: ("key_unknown", 401),
    KeyRevoked: ("key_revoked", 401),
    NonceReplayed: ("nonce_replayed", 401),
    PartnerSuspended: ("partner_suspended", 403),
}


@pytest.mark.parametrize("error", list(CODES))
def test_error_codes_and_statuses(error: type[ExchangeError]) -> None:
    assert (error.code, error.status) == CODES[error]
    assert issubclass(error, Forbidden if error.status == 403 else Unauthorized)
    assert error.title
    assert error().detail == error.title


def test_partner_api_error_is_client_side() -> None:
    problem = {"code": "insufficient_points", "detail": "only 3"}
    error = errors.PartnerAPIError(422, "insufficient_points", "only 3", problem)
    assert not isinstance(error, ExchangeError)
    assert (error.status, error.code, error.detail, error.problem) == (
        422,
        *problem.values(),
        problem,
    )


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module", [errors, signing, client])
def test_all_is_sorted_and_exported(module: Any) -> None:
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_key)
    assert all(hasattr(module, name) for name in exported)


# --- our signature base against the library's -------------------------------------------------

# Dot segments ("." and "..") are excluded: URL clients normalise them away before sending.
_PATH_SEGMENT = (
    st.text(alphabet=st.sampled_from("abcXYZ019-._~%2F5Fz"), min_size=1, max_size=12)
    .map(lambda text: text.replace("%", "%25") if text.count("%") % 3 else text)
    .filter(lambda text: text.strip(".") != "")
)
_QUERY = st.lists(
    st.tuples(st.text("abc_", min_size=1, max_size=5), st.text("xyz01%2B", max_size=6)),
    max_size=3,
).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
_HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(_PATH_SEGMENT, min_size=1, max_size=4),
    query=_QUERY,
    idempotency_key=_HEADER_VALUE.map(lambda value: value.strip() or "k"),
    body=st.binary(max_size=64),
    method=st.sampled_from(["POST", "GET"]),
)
def test_our_signature_base_is_the_librarys_byte_for_byte(
    segments: list[str], query: str, idempotency_key: str, body: bytes, method: str
) -> None:
    """The hot path builds the base itself; http-message-signatures must agree exactly."""
    path = "/" + "/".join(segments)
    url = f"https://{AUTHORITY}{path}" + (f"?{query}" if query else "")
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    send_body = body if method == "POST" else None
    added = sign_request(
        method=method, url=url, headers=headers, body=send_body, key_id=KEY_ID,
        private_key=PRIVATE_KEY,
    )  # fmt: skip
    all_headers = [(name.lower(), value) for name, value in {**headers, **added}.items()]
    request = IncomingRequest(method, path, query, all_headers, send_body or b"")
    parsed = parse_signature_headers(request.headers)
    ours, member = signature_base(parsed, request, authority=AUTHORITY)
    library = verify_message_signature(request, authority=AUTHORITY, public_key=PUBLIC_KEY)
    assert ours == library.signature_base
    assert member == library.signature_input
