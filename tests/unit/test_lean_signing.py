"""The server's lean verifier agrees with the reference verifier on every request.

`partners.signing.lean_verify_headers` / `lean_verify_body` (the request path) and
`verify_headers` / `verify_body` (http_sf parsing and serialization; the reference) must
accept exactly the same requests, with the same `VerifiedSignature`, and refuse exactly
the same ones, with the same error class, code and detail. Hypothesis generates requests
that are valid, spelled unusually (which the lean path hands to the reference), or broken
in every way the profile names: components, parameters, window, algorithm, labels,
members, the signature itself, altered path/query/headers/body/digest, duplicated headers,
and unknown, revoked, suspended, terminated or small-order keys. Every accepted request is
also verified by http-message-signatures' own verifier (`verify_message_signature`),
which must build the same signature base.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exchange.errors import ExchangeError
from partners.signing import (
    IncomingRequest,
    KeyRecord,
    SignatureParams,
    VerifiedSignature,
    b64url_decode,
    lean_verify_body,
    lean_verify_headers,
    parse_signature_headers,
    public_key_b64url,
    sign_request,
    signature_base,
    verify_body,
    verify_headers,
    verify_message_signature,
)

AUTHORITY = "exchange.test"
NOW = 1_800_000_000
PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC_KEY = b64url_decode(public_key_b64url(PRIVATE_KEY))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SMALL_ORDER_KEY = bytes(32)  # the identity's neighbour encodings are refused the same way
REPLAYED_NONCE = "r" * 24
KEYS = {
    "key_1": KeyRecord("key_1", "partner_a", PUBLIC_KEY, True, True),
    "key_revoked": KeyRecord("key_revoked", "partner_a", PUBLIC_KEY, False, True),
    "key_suspended": KeyRecord("key_suspended", "partner_b", PUBLIC_KEY, True, False),
    "key_terminated": KeyRecord("key_terminated", "partner_c", PUBLIC_KEY, True, False, True),
    "key_small": KeyRecord("key_small", "partner_d", SMALL_ORDER_KEY, True, True),
}
POST_COMPONENTS = (
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-type",
    "content-digest",
    "idempotency-key",
)
COMPONENT_POOL = (
    *POST_COMPONENTS,
    "@target-uri",
    "@signature-params",
    "x-till",
    "host",
    "Content-Type",
    "content-length",
)


async def resolve_key(key_id: str) -> KeyRecord | None:
    return KEYS.get(key_id)


async def record_nonce(key_id: str, nonce: str, created: int) -> bool:
    return nonce != REPLAYED_NONCE


Outcome = tuple[str, Any, Any, Any]


async def reference(request: IncomingRequest) -> Outcome:
    """The server's order: headers with no body read, then the body."""
    try:
        checked = await verify_headers(
            dataclasses.replace(request, body=b""),
            authority=AUTHORITY,
            now=NOW,
            resolve_key=resolve_key,
        )
        verified = await verify_body(checked, request, record_nonce=record_nonce)
    except ExchangeError as exc:
        return ("refused", type(exc), exc.code, exc.detail)
    return ("accepted", verified, None, None)


async def lean(request: IncomingRequest) -> Outcome:
    try:
        checked = await lean_verify_headers(
            dataclasses.replace(request, body=b""),
            authority=AUTHORITY,
            now=NOW,
            resolve_key=resolve_key,
        )
        verified = await lean_verify_body(checked, request, record_nonce=record_nonce)
    except ExchangeError as exc:
        return ("refused", type(exc), exc.code, exc.detail)
    return ("accepted", verified, None, None)


# --- generating requests -------------------------------------------------------------------


def _digest(name: str, body: bytes) -> str:
    algorithm = hashlib.sha256 if name == "sha-256" else hashlib.sha512
    return f"{name}=:{base64.b64encode(algorithm(body).digest()).decode()}:"


DEFECTS = (
    "components-random",
    "component-dropped",
    "component-added",
    "components-shuffled",
    "component-param",
    "created-window",
    "created-spelling",
    "keyid",
    "keyid-spelling",
    "nonce",
    "nonce-spelling",
    "tag",
    "extra-param",
    "param-dropped",
    "params-shuffled",
    "separator",
    "label",
    "input-whitespace",
    "second-member",
    "wrong-key",
    "short-signature",
    "signature-spelling",
    "signature-label",
    "digest",
    "x-till",
    "change-path",
    "change-query",
    "change-method",
    "change-body",
    "change-header",
    "duplicate-header",
    "duplicate-signature",
    "drop-signature",
    "drop-input",
    "upper-names",
    "trailing-space",
)


def _one(draw: st.DrawFn, choices: list[Any]) -> Any:
    return draw(st.sampled_from(choices))


def _integer(draw: st.DrawFn, value: int, odd: bool) -> str:
    """An sf-integer; `odd`: leading zeros, a decimal, a string, or -0."""
    if not odd:
        return str(value)
    return _one(draw, ["00" + str(value), f"{value}.0", f'"{value}"', "-0", "0"])


def _string(draw: st.DrawFn, value: str, odd: bool) -> str:
    """An sf-string (escaped where needed); `odd`: a token, a byte sequence or a boolean."""
    if odd:
        return _one(draw, [value, f":{base64.b64encode(value.encode()).decode()}:", "?1"])
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _components(draw: st.DrawFn, defects: frozenset[str], method: str, has_body: bool) -> list[str]:
    components = list(POST_COMPONENTS if method == "POST" or has_body else POST_COMPONENTS[:4])
    if method == "GET" and not has_body and draw(st.booleans()):
        components.append("idempotency-key")  # covering more than needed is fine
    if "components-random" in defects:
        components = draw(st.lists(st.sampled_from(COMPONENT_POOL), max_size=9))
    if "component-dropped" in defects and components:
        del components[draw(st.integers(0, len(components) - 1))]
    if "component-added" in defects:
        components.append(_one(draw, list(COMPONENT_POOL)))
    if "components-shuffled" in defects:
        components = draw(st.permutations(components))
    return components


def _params(draw: st.DrawFn, defects: frozenset[str]) -> list[tuple[str, str]]:
    created = NOW
    if "created-window" in defects:
        created += _one(draw, [-300, -301, 30, 31, -100_000, 10**15, -(10**15)])
    nonce = "n" * 24
    if "nonce" in defects:
        nonce = _one(draw, ["n" * 15, "n" * 16, "n" * 128, "n" * 129, REPLAYED_NONCE, 'q"\\!' * 5])
    key_id = "key_1"
    if "keyid" in defects or draw(st.integers(0, 5)) == 0:
        key_id = _one(draw, [*KEYS, "key_unknown", "", "k" * 129])
    tag = _one(draw, ["other", "", "Coalition-v1"]) if "tag" in defects else "coalition-v1"
    params: list[tuple[str, str]] = [
        ("created", _integer(draw, created, "created-spelling" in defects)),
        ("keyid", _string(draw, key_id, "keyid-spelling" in defects)),
        ("nonce", _string(draw, nonce, "nonce-spelling" in defects)),
        ("tag", _string(draw, tag, False)),
    ]
    if "extra-param" in defects:
        params.append(
            _one(
                draw,
                [
                    ("alg", '"ed25519"'),
                    ("alg", '"rsa-pss-sha512"'),
                    ("alg", "1"),
                    ("expires", str(NOW - 1)),
                    ("expires", str(NOW)),
                    ("expires", str(NOW + 60)),
                    ("expires", '"soon"'),
                    ("unknown", '"x"'),
                    ("created", str(NOW)),
                    ("nonce", '"' + "m" * 24 + '"'),
                ],
            )
        )
    if "param-dropped" in defects:
        del params[draw(st.integers(0, len(params) - 1))]
    if "params-shuffled" in defects:
        params = draw(st.permutations(params))
    return params


def _signature_input(
    draw: st.DrawFn, defects: frozenset[str], method: str, has_body: bool
) -> tuple[str, str]:
    """(label, Signature-Input value)."""
    components = _components(draw, defects, method, has_body)
    params = _params(draw, defects)
    separator = _one(draw, ["  ", "\t"]) if "separator" in defects else " "
    inner = "(" + separator.join(f'"{name}"' for name in components) + ")"
    if "component-param" in defects and components:
        inner = inner.replace('")', '";sf)', 1)
    label = _one(draw, ["x", "*a.b-c_9", "Sig1", "s" * 40]) if "label" in defects else "sig1"
    value = f"{label}={inner}" + "".join(f";{name}={spelled}" for name, spelled in params)
    if "input-whitespace" in defects:
        value = _one(draw, [f" {value}", f"{value} ", f"{value}\t"])
    if "second-member" in defects:
        value += f", sig2={inner}"
    return label, value


def _sign(request: IncomingRequest, key: Ed25519PrivateKey) -> bytes | None:
    """A valid signature over the request as the reference would verify it, if it parses."""
    inputs = [value for name, value in request.headers if name == "signature-input"]
    label = inputs[0].split("=", 1)[0].strip() if inputs else "x"
    placeholder = f"{label}=:" + base64.b64encode(bytes(64)).decode() + ":"
    try:
        parsed = parse_signature_headers([*request.headers, ("signature", placeholder)])
        base, _ = signature_base(parsed, request, authority=AUTHORITY)
    except (ExchangeError, ValueError, KeyError):
        return None
    return key.sign(base)


def _digest_header(draw: st.DrawFn, defects: frozenset[str], body: bytes) -> str | None:
    good256 = _digest("sha-256", body or b"{}")
    digest: str | None = _one(draw, [good256, _digest("sha-512", body or b"{}")])
    if not body and draw(st.booleans()):
        digest = None
    if "digest" in defects:
        digest = _one(
            draw,
            [
                None,
                _digest("sha-256", body + b"x"),
                f"{good256}, {_digest('sha-512', body)}",
                f"md5=:AAAA:, {good256}",
                "md5=:AAAA:",
                " " + good256 + " ",
                good256.rstrip(":").rstrip("=") + ":",
                good256.replace("sha-256", "SHA-256"),
                good256 + ";x",
                "sha-256=:not base64:",
                "sha-256=:" + base64.b64encode(b"\0" * 32).decode() + ":",
                "sha-512=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":",
            ],
        )
    return digest


def _headers(
    draw: st.DrawFn, defects: frozenset[str], method: str, body: bytes
) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = [("host", "whatever.example")]
    if body or draw(st.booleans()):
        headers.append(("content-type", _one(draw, ["application/json", " a/b \t"])))
    if method != "GET" or draw(st.booleans()):
        headers.append(("idempotency-key", _one(draw, ["idem-1", "k" * 40])))
    digest = _digest_header(draw, defects, body)
    if digest is not None:
        headers.append(("content-digest", digest))
    if "x-till" in defects:
        headers.append(("x-till", _one(draw, ["7", "7\r\n 8", "caf\u00e9"])))
    return headers


def _signature(
    draw: st.DrawFn, defects: frozenset[str], unsigned: IncomingRequest, label: str
) -> str:
    key = OTHER_KEY if "wrong-key" in defects else PRIVATE_KEY
    raw = _sign(unsigned, key) or draw(st.binary(min_size=64, max_size=64))
    if "short-signature" in defects:
        raw = raw[: _one(draw, [0, 32, 63])] + _one(draw, [b"", b"\0\0"])
    encoded = base64.b64encode(raw).decode()
    if "signature-label" in defects:
        label = _one(draw, ["other", "Sig1"])
    if "signature-spelling" not in defects:
        return f"{label}=:{encoded}:"
    return _one(
        draw,
        [
            f"{label}=:{encoded.rstrip('=')}:",
            f"{label}=:{encoded}:;p=1",
            f"{label}=:{encoded}:, sig2=:{encoded}:",
            f" {label}=:{encoded}:",
            f"{label}={encoded}",
        ],
    )


def _changed_lines(
    draw: st.DrawFn, defects: frozenset[str], headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Header lines changed after signing."""
    signature = [line for line in headers if line[0] == "signature"]
    if "change-header" in defects:
        index = draw(st.integers(0, len(headers) - 1))
        headers[index] = (headers[index][0], headers[index][1] + "x")
    if "duplicate-header" in defects:
        headers.append(_one(draw, headers))
    if "duplicate-signature" in defects:
        headers += signature
    dropped = {"drop-signature": "signature", "drop-input": "signature-input"}
    for defect, name in dropped.items():
        if defect in defects:
            headers = [line for line in headers if line[0] != name]
    if "upper-names" in defects:
        headers = [(name.title(), value) for name, value in headers]
    if "trailing-space" in defects:
        headers = [(name, value + " ") for name, value in headers]
    return headers


@st.composite
def requests(draw: st.DrawFn) -> IncomingRequest:
    """A signed request with up to two defects of `DEFECTS` (none in about a third)."""
    defects = frozenset(
        draw(st.just(set()) | st.sets(st.sampled_from(DEFECTS), min_size=1, max_size=2))
    )
    method = _one(draw, ["POST", "GET", "post"])
    path = _one(draw, ["/v1/earn", "/v1/members/mem%5Fab/balance", "", "/v1/b%C3%A9"])
    query = _one(draw, ["", "a=1&b=%20"])
    body = b""
    if method != "GET" or draw(st.integers(0, 5)) == 0:
        body = _one(draw, [b'{"member_id":"m","points":1}', b"{}"])
    headers = _headers(draw, defects, method, body)
    label, signature_input = _signature_input(draw, defects, method, bool(body))
    headers.append(("signature-input", signature_input))
    unsigned = IncomingRequest(method, path, query, headers, body)
    headers = [*headers, ("signature", _signature(draw, defects, unsigned, label))]
    # Changes after signing: the signature no longer covers what is sent.
    sent = IncomingRequest(
        "PUT" if "change-method" in defects else method,
        path + "x" if "change-path" in defects else path,
        query + "&z=1" if "change-query" in defects else query,
        _changed_lines(draw, defects, headers),
        body + b" " if "change-body" in defects else body,
    )
    return sent


# --- the properties ------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
async def test_lean_and_reference_verifiers_agree(request: IncomingRequest) -> None:
    expected = await reference(request)
    got = await lean(request)
    assert got == expected
    try:
        checked = await lean_verify_headers(
            dataclasses.replace(request, body=b""),
            authority=AUTHORITY,
            now=NOW,
            resolve_key=resolve_key,
        )
        event("lean path" if checked.fields is not None else "reference path")
    except ExchangeError:
        event("refused by the headers")
    event(f"{expected[0]} {expected[2] or ''}".strip())
    if expected[0] == "accepted":
        # The library's own RFC 9421 verifier builds the same base and accepts it.
        verified: VerifiedSignature = expected[1]
        library = verify_message_signature(request, authority=AUTHORITY, public_key=PUBLIC_KEY)
        assert library.signature_base == verified.signature_base
        assert library.signature == verified.signature


def _signed(method: str = "POST", body: bytes = b'{"points":1}') -> IncomingRequest:
    fields = {"Content-Type": "application/json", "Idempotency-Key": "idem-1"}
    fields |= sign_request(
        method=method,
        url=f"https://{AUTHORITY}/v1/earn",
        headers=fields,
        body=body,
        key_id="key_1",
        private_key=PRIVATE_KEY,
        created=NOW,
        nonce="n" * 24,
    )
    return IncomingRequest(
        method, "/v1/earn", "", [(k.lower(), v) for k, v in fields.items()], body
    )


async def test_what_the_exchanges_signer_sends_takes_the_lean_path() -> None:
    request = _signed()
    checked = await lean_verify_headers(
        dataclasses.replace(request, body=b""),
        authority=AUTHORITY,
        now=NOW,
        resolve_key=resolve_key,
    )
    assert checked.fields is not None
    assert checked.verified.params == SignatureParams(NOW, "key_1", "n" * 24)
    assert await lean(request) == await reference(request)


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (";created=", ";created=0"),  # a leading zero: same value, other spelling
        ('" "', '"  "'),  # two spaces between components
        ("sig1=(", " sig1=("),  # leading whitespace
    ],
)
async def test_unusual_spellings_go_to_the_reference_and_verify_the_same(
    find: str, replace: str
) -> None:
    request = _signed()
    headers = [
        (name, value.replace(find, replace, 1) if name == "signature-input" else value)
        for name, value in request.headers
        if name != "signature"
    ]
    respelled = dataclasses.replace(request, headers=headers)
    # Re-sign over the re-spelled parameters, as a client spelling them so would.
    raw = _sign(respelled, PRIVATE_KEY)
    assert raw is not None
    signature = f"sig1=:{base64.b64encode(raw).decode()}:"
    respelled = dataclasses.replace(respelled, headers=[*headers, ("signature", signature)])
    checked = await lean_verify_headers(
        dataclasses.replace(respelled, body=b""),
        authority=AUTHORITY,
        now=NOW,
        resolve_key=resolve_key,
    )
    assert checked.fields is None  # the lean path did not claim it
    expected = await reference(respelled)
    assert expected[0] == "accepted"
    assert await lean(respelled) == expected


async def test_a_lean_refusal_has_the_reference_code_and_detail() -> None:
    request = _signed()
    tampered = dataclasses.replace(request, path="/v1/burn")
    got = await lean(tampered)
    assert got == await reference(tampered)
    assert got[2] == "signature_invalid"
    wrong_body = dataclasses.replace(request, body=b'{"points":2}')
    got = await lean(wrong_body)
    assert got == await reference(wrong_body)
    assert got[2] == "digest_mismatch"
