"""The server's verifier: the same profile as `_verify`, without the generic machinery.

`verify_headers` / `verify_body` (in `_verify`) parse `Signature-Input`, `Signature` and
`Content-Digest` with a general RFC 8941 parser and re-serialize the parameters to build
the signature base; on the request path that was about as much CPU as Ed25519 itself.
Every request the exchange's own signers (`sign_request`, the bench's `presign`) and any
ordinary RFC 9421 client send spells these fields canonically: one member, single spaces
between the covered components, plain strings and integers as parameters, padded
base64. For such a field the RFC 8941 serialization of its parsed value *is* its text,
so the `@signature-params` line of the base is the header's own text after `label=`.

`lean_verify_headers` recognises exactly that canonical spelling with anchored regular
expressions and then applies the profile's rules in the same order and with the same
errors as `verify_headers`. Anything it does not recognise (extra whitespace, escapes,
booleans, tokens, decimals, leading zeros, duplicate names, several members, unpadded
base64, ...) is handed whole to the reference verifier, which parses it generically and
refuses or accepts it as it always did. So the lean path cannot widen what is accepted:
it only takes a shortcut where it can prove the reference parse would give the same
value, and the property test (`tests/unit/test_lean_signing.py`) checks both verifiers
agree on generated valid and defective requests, codes included. Its Ed25519 check is
libsodium's (`_ed25519.verifies`), the reference's OpenSSL's: the same verdicts, at five
eighths of the CPU.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from http_message_signatures.structures import normalize_header_value

from exchange.errors import InvariantViolation
from partners.errors import (
    DigestMismatch,
    KeyRevoked,
    NonceReplayed,
    SignatureInsufficient,
    SignatureInvalid,
)
from partners.signing._data import (
    BODY_COMPONENTS,
    COVERED_COMPONENTS_MAX,
    POST_COMPONENTS,
    REQUIRED_COMPONENTS,
    SIGNATURE_FIELD_BYTES_MAX,
    IncomingRequest,
    KeyResolver,
    NonceRecorder,
    ParsedSignature,
    VerifiedSignature,
)
from partners.signing._ed25519 import is_acceptable_public_key, verifies
from partners.signing._parse import (
    check_content_digest,
    check_content_digest_field,
    check_signature_params,
    require_known_key,
    require_usable_key,
)
from partners.signing._verify import VerifiedHeaders, verify_body, verify_headers

__all__ = ["LeanHeaders", "lean_verify_body", "lean_verify_headers"]

# RFC 8941 key: lcalpha / "*", then lcalpha / DIGIT / "_" / "-" / "." / "*".
_KEY: Final = r"[a-z*][a-z0-9_.*-]*"
# A component name the profile can cover, as a plain sf-string (no escapes).
_COMPONENT: Final = r'"[a-z0-9@_.-]+"'
# A parameter value: an sf-integer in its one canonical spelling, or an sf-string
# needing no escapes. (Anything else, e.g. a boolean or a token, goes to the reference.)
_VALUE: Final = r'(?:0|-?[1-9][0-9]{0,14}|"[\x20\x21\x23-\x5b\x5d-\x7e]*")'
_SIGNATURE_INPUT: Final = re.compile(
    rf"({_KEY})=(\((?:{_COMPONENT}(?: {_COMPONENT})*)?\)((?:;{_KEY}={_VALUE})*))", re.ASCII
)
_COMPONENTS: Final = re.compile(r'"([^"]+)"', re.ASCII)
_PARAM: Final = re.compile(rf";({_KEY})=({_VALUE})", re.ASCII)
# 64 bytes are 86 base64 characters and two of padding.
_SIGNATURE: Final = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]{{86}}==):", re.ASCII)
_DIGEST: Final = re.compile(
    r"sha-256=:([A-Za-z0-9+/]{43}=):|sha-512=:([A-Za-z0-9+/]{86}==):", re.ASCII
)
_FIELD_MAX: Final = SIGNATURE_FIELD_BYTES_MAX
_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}

# Bounded: one entry per distinct stored key seen.
_acceptable = functools.lru_cache(maxsize=4096)(is_acceptable_public_key)


def _fields(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Header lines by lower-cased name, in arrival order, duplicates kept."""
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    return fields


@dataclass(frozen=True, slots=True)
class _Canonical:
    parsed: ParsedSignature
    signature_params: str  # the Signature-Input member's text after `label=`


def _canonical_signature(fields: Mapping[str, list[str]]) -> _Canonical | None:
    """The signature when both fields are spelled canonically (see the module docstring),
    with exactly the value `parse_signature_headers` would return; else None."""
    inputs = fields.get("signature-input", ())
    signatures = fields.get("signature", ())
    if len(inputs) != 1 or len(signatures) != 1:
        return None
    # The length limit is the reference's first refusal: a longer field is never canonical.
    found = _SIGNATURE_INPUT.fullmatch(inputs[0]) if len(inputs[0]) <= _FIELD_MAX else None
    signed = _SIGNATURE.fullmatch(signatures[0])
    if found is None or signed is None or found[1] != signed[1]:
        return None
    label, member, param_text = found[1], found[2], found[3]
    components = tuple(_COMPONENTS.findall(member[: len(member) - len(param_text)]))
    pairs = _PARAM.findall(param_text)
    params: dict[str, object] = {
        name: value[1:-1] if value.startswith('"') else int(value) for name, value in pairs
    }
    if (
        len(components) > COVERED_COMPONENTS_MAX
        or len(set(components)) != len(components)
        or "@signature-params" in components
        or len(params) != len(pairs)  # a parameter named twice
    ):
        return None
    # The pattern admits exactly 86 base64 characters and "==": always 64 bytes.
    signature = base64.b64decode(signed[2], validate=True)
    return _Canonical(ParsedSignature(label, components, params, signature), member)


def _coverage(
    parsed: ParsedSignature, method: str, has_body: bool, fields: Mapping[str, list[str]]
) -> None:
    """`check_coverage` over the indexed header lines (same rules, same errors)."""
    required = list(REQUIRED_COMPONENTS)
    if has_body:
        if "content-digest" not in fields:
            raise SignatureInsufficient(
                "a request body needs a Content-Digest header (sha-256 or sha-512), "
                "covered by the signature"
            )
        required += BODY_COMPONENTS
    if method.upper() == "POST":
        required += POST_COMPONENTS
    missing = [name for name in required if name not in parsed.components]
    if missing:
        listed = " ".join(f'"{name}"' for name in missing)
        raise SignatureInsufficient(f"the signature must also cover {listed}")
    for name in parsed.components:
        if name.startswith("@"):
            if name not in REQUIRED_COMPONENTS:
                raise SignatureInvalid(f'derived component "{name}" is not part of the profile')
            continue
        count = len(fields.get(name, ()))
        if count != 1:
            raise SignatureInvalid(
                f'covered header "{name}" appears {count} times; it must appear exactly once'
            )


def _canonical_digest(fields: Mapping[str, list[str]]) -> tuple[str, bytes] | None:
    """(algorithm, digest) of a Content-Digest sent once as one canonical sha-256 or
    sha-512 member; None when absent or spelled otherwise (the reference decides)."""
    lines = fields.get("content-digest")
    if lines is None or len(lines) != 1:
        return None
    found = _DIGEST.fullmatch(lines[0])
    if found is None:
        return None
    if found[1] is not None:
        return "sha-256", base64.b64decode(found[1])
    return "sha-512", base64.b64decode(found[2])


@dataclass(frozen=True, slots=True)
class LeanHeaders:
    """`VerifiedHeaders`, plus what the lean path already knows about the headers.

    `fields` is None when the reference verifier checked the headers: then the body is
    checked by the reference too.
    """

    verified: VerifiedHeaders
    fields: Mapping[str, list[str]] | None


async def lean_verify_headers(
    request: IncomingRequest, *, authority: str, now: int, resolve_key: KeyResolver
) -> LeanHeaders:
    """`verify_headers`, rules and order unchanged, for canonically spelled fields."""
    fields = _fields(request.headers)
    canonical = _canonical_signature(fields)
    if canonical is None:
        verified = await verify_headers(
            request, authority=authority, now=now, resolve_key=resolve_key
        )
        return LeanHeaders(verified, None)
    parsed = canonical.parsed
    params = check_signature_params(parsed, now=now)
    _coverage(parsed, request.method, bool(request.body), fields)
    digest = _canonical_digest(fields)
    if request.body:
        if digest is None:
            check_content_digest(request)
        else:
            _check_digest(digest, request.body)
    elif digest is None:
        check_content_digest_field(request)
    record = require_known_key(await resolve_key(params.key_id), params.key_id)
    if not _acceptable(record.public_key):
        raise KeyRevoked(f"key {params.key_id!r} has been revoked")
    base = _signature_base(parsed, request, fields, authority, canonical.signature_params)
    try:
        genuine = verifies(record.public_key, parsed.signature, base)
    except ValueError as exc:
        raise InvariantViolation(f"stored key {params.key_id!r} is not Ed25519") from exc
    if not genuine:
        raise SignatureInvalid(
            f"the signature does not verify for keyid {params.key_id!r}; sign @authority as "
            f'"{authority}" and @path and @query exactly as sent'
        ) from None
    require_usable_key(record, params.key_id)
    signature_input = f"{parsed.label}={canonical.signature_params}"
    return LeanHeaders(VerifiedHeaders(parsed, params, record, base, signature_input), fields)


def _signature_base(
    parsed: ParsedSignature,
    request: IncomingRequest,
    fields: Mapping[str, list[str]],
    authority: str,
    signature_params: str,
) -> bytes:
    """`signature_base` for a canonical Signature-Input: its own text is the serialization.

    Coverage has been checked: every derived component is one of the four, every covered
    header is there exactly once.
    """
    derived = {
        "@method": request.method,
        "@authority": authority,
        "@path": request.path or "/",
        "@query": "?" + request.query,
    }
    lines = []
    for name in parsed.components:
        value = derived[name] if name.startswith("@") else normalize_header_value(fields[name][0])
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {signature_params}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise SignatureInvalid("covered components must have ASCII values") from None


def _check_digest(digest: tuple[str, bytes], body: bytes) -> None:
    name, expected = digest
    if not hmac.compare_digest(expected, _DIGESTS[name](body).digest()):
        raise DigestMismatch(f"the {name} Content-Digest does not match the body sent")


async def lean_verify_body(
    checked: LeanHeaders, request: IncomingRequest, *, record_nonce: NonceRecorder
) -> VerifiedSignature:
    """`verify_body`, rules and order unchanged, for headers the lean path checked."""
    fields = checked.fields
    if fields is None:
        return await verify_body(checked.verified, request, record_nonce=record_nonce)
    verified = checked.verified
    parsed, params = verified.parsed, verified.params
    content_digest: str | None = None
    # Without a body or a Content-Digest, the headers' checks saw this very request:
    # coverage and digest would pass again the same way (a read's usual case).
    if request.body or "content-digest" in fields:
        _coverage(parsed, request.method, bool(request.body), fields)
        digest = _canonical_digest(fields)
        if digest is None:
            content_digest = check_content_digest(request)
        else:
            _check_digest(digest, request.body)
            content_digest = fields["content-digest"][0]
    if not await record_nonce(params.key_id, params.nonce, params.created):
        raise NonceReplayed.spent()
    return VerifiedSignature(
        key_id=params.key_id,
        partner_id=verified.record.partner_id,
        label=parsed.label,
        created=params.created,
        nonce=params.nonce,
        signature_input=verified.signature_input,
        signature=f"{parsed.label}=:{base64.b64encode(parsed.signature).decode('ascii')}:",
        content_digest=content_digest,
        signature_base=verified.signature_base,
    )
