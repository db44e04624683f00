"""Verification: the whole profile (`verify_request`), RFC 9421 alone
(`verify_message_signature`), and a stored signature base re-checked
(`verify_signature_base`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import HTTPMessageSignaturesException, MappingKeyResolver
from http_message_signatures.algorithms import ED25519

from exchange.errors import InvariantViolation
from partners.errors import KeyRevoked, NonceReplayed, SignatureInvalid
from partners.signing._base import (
    ComponentResolver,
    FieldLines,
    SignedMessage,
    WindowlessVerifier,
    signature_base,
)
from partners.signing._data import (
    IncomingRequest,
    KeyRecord,
    KeyResolver,
    MessageSignature,
    NonceRecorder,
    ParsedSignature,
    SignatureParams,
    VerifiedSignature,
)
from partners.signing._ed25519 import is_acceptable_public_key
from partners.signing._parse import (
    check_content_digest,
    check_content_digest_field,
    check_coverage,
    check_signature_params,
    parse_signature_headers,
    require_known_key,
    require_usable_key,
)

__all__ = [
    "VerifiedHeaders",
    "verify_body",
    "verify_headers",
    "verify_message_signature",
    "verify_request",
    "verify_signature_base",
]

# Bounded: one entry per distinct stored key seen, a few microseconds saved per request.
_acceptable = functools.lru_cache(maxsize=4096)(is_acceptable_public_key)
_SIGNATURE_PARAMS: Final = '"@signature-params"'  # the base's last line, as the library keys it


# --- verification ---------------------------------------------------------------------------


def verify_message_signature(
    request: IncomingRequest, *, authority: str, public_key: bytes | Ed25519PublicKey
) -> MessageSignature:
    """RFC 9421 verification of the request's single signature with an Ed25519 key.

    Applies only the structural checks of `parse_signature_headers` (one signature, plain
    components, 64-byte value); no parameter, clock, coverage, digest or key-status rules:
    `verify_request` applies those first. The base is
    built by the library's verifier through `ComponentResolver`, then re-checked here
    so that `signature_base` is provably the byte string that verified.
    Raises SignatureInvalid; ValueError if `public_key` is not a 32-byte Ed25519 key.
    """
    key = (
        public_key
        if isinstance(public_key, Ed25519PublicKey)
        else Ed25519PublicKey.from_public_bytes(public_key)
    )
    parsed = parse_signature_headers(request.headers)
    key_id = parsed.params.get("keyid")
    verifier = WindowlessVerifier(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(public_keys={str(key_id): key}, private_keys={}),
        component_resolver_class=ComponentResolver,
    )
    message = SignedMessage(
        request.method, authority, request.path, request.query, FieldLines(request.headers)
    )
    try:
        (result,) = verifier.verify(message, max_age=None)
    except (HTTPMessageSignaturesException, ValueError) as exc:
        raise SignatureInvalid(
            f"the signature does not verify for keyid {key_id!r}; sign @authority as "
            f'"{authority}" and @path and @query exactly as sent'
        ) from exc
    lines = [f"{name}: {value}" for name, value in result.covered_components.items()]
    base = "\n".join(lines).encode("ascii")
    if not verify_signature_base(base, parsed.signature, key):
        raise InvariantViolation("the library verified a signature base we cannot re-verify")
    signature_input = f"{result.label}={result.covered_components[_SIGNATURE_PARAMS]}"
    signature = http_sf.ser({result.label: (parsed.signature, {})})
    return MessageSignature(result.label, signature_input, signature, base)


def verify_signature_base(
    signature_base: bytes, signature: bytes, public_key: bytes | Ed25519PublicKey
) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `signature_base`.

    Re-verifies a stored posting. ValueError if `public_key` is not 32 raw bytes.
    """
    key = (
        public_key
        if isinstance(public_key, Ed25519PublicKey)
        else Ed25519PublicKey.from_public_bytes(public_key)
    )
    try:
        key.verify(signature, signature_base)
    except CryptoInvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class VerifiedHeaders:
    """A signature verified over the headers alone: the body and the nonce not yet checked.

    The signature base covers the Content-Digest *header*, so the signature can be
    verified (and the caller rate-limited) before a byte of the body is read.
    """

    parsed: ParsedSignature
    params: SignatureParams
    record: KeyRecord
    signature_base: bytes
    signature_input: str


async def verify_headers(
    request: IncomingRequest, *, authority: str, now: int, resolve_key: KeyResolver
) -> VerifiedHeaders:
    """Rules 1-5 and the key, on the headers (`request.body` may still be empty).

    Order: structure, parameters and window, coverage, a known key, the cryptography,
    and only then the key's and the partner's status (a stranger learns nothing of them).
    """
    parsed = parse_signature_headers(request.headers)
    params = check_signature_params(parsed, now=now)
    check_coverage(parsed, request)
    if request.body:  # already read (not on the server's path): the cheap check first
        check_content_digest(request)
    else:
        check_content_digest_field(request)
    record = require_known_key(await resolve_key(params.key_id), params.key_id)
    if not _acceptable(record.public_key):
        # Stored before the strict check (start-up revokes these): fail closed.
        raise KeyRevoked(f"key {params.key_id!r} has been revoked")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(record.public_key)
    except ValueError as exc:
        raise InvariantViolation(f"stored key {params.key_id!r} is not Ed25519") from exc
    base, signature_input = signature_base(parsed, request, authority=authority)
    if not verify_signature_base(base, parsed.signature, public_key):
        raise SignatureInvalid(
            f"the signature does not verify for keyid {params.key_id!r}; sign @authority as "
            f'"{authority}" and @path and @query exactly as sent'
        )
    require_usable_key(record, params.key_id)
    return VerifiedHeaders(parsed, params, record, base, signature_input)


async def verify_body(
    verified: VerifiedHeaders, request: IncomingRequest, *, record_nonce: NonceRecorder
) -> VerifiedSignature:
    """Rules 4-7 with the body read: coverage again (a body needs its digest covered),
    Content-Digest against the raw bytes, then the nonce (the one database write)."""
    parsed, params = verified.parsed, verified.params
    check_coverage(parsed, request)
    digest = check_content_digest(request)
    if not await record_nonce(params.key_id, params.nonce, params.created):
        raise NonceReplayed.spent()
    return VerifiedSignature(
        key_id=params.key_id,
        partner_id=verified.record.partner_id,
        label=parsed.label,
        created=params.created,
        nonce=params.nonce,
        signature_input=verified.signature_input,
        signature=http_sf.ser({parsed.label: (parsed.signature, {})}),
        content_digest=digest,
        signature_base=verified.signature_base,
    )


async def verify_request(
    request: IncomingRequest,
    *,
    authority: str,
    now: int,
    resolve_key: KeyResolver,
    record_nonce: NonceRecorder,
) -> VerifiedSignature:
    """Every rule of the profile: `verify_headers` then `verify_body`.

    `authority` is the exchange's public host, lower-cased, port only when not the
    scheme's default; `now` is the server clock in Unix seconds. Exceptions from
    `resolve_key` and `record_nonce` propagate (the caller fails closed).
    """
    verified = await verify_headers(request, authority=authority, now=now, resolve_key=resolve_key)
    return await verify_body(verified, request, record_nonce=record_nonce)
