"""Rules 1-7 of the profile (see the package docstring): the Signature-Input and
Signature headers parsed, the parameters and clock window, coverage, Content-Digest,
and the key's status.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Final

import http_sf
from http_message_signatures.structures import normalize_header_value

from partners.errors import (
    DigestMismatch,
    KeyRevoked,
    KeyUnknown,
    PartnerSuspended,
    PartnerTerminated,
    SignatureExpired,
    SignatureInsufficient,
    SignatureInvalid,
    SignatureMissing,
)
from partners.signing._data import (
    BODY_COMPONENTS,
    CONTENT_DIGEST_FIELD_BYTES_MAX,
    COVERED_COMPONENTS_MAX,
    CREATED_FUTURE_S_MAX,
    CREATED_PAST_S_MAX,
    KEY_ID_LEN_MAX,
    NONCE_LEN_MAX,
    NONCE_LEN_MIN,
    POST_COMPONENTS,
    REQUIRED_COMPONENTS,
    SIGNATURE_FIELD_BYTES_MAX,
    SIGNATURE_TAG,
    IncomingRequest,
    KeyRecord,
    ParsedSignature,
    SignatureParams,
)

__all__ = [
    "check_content_digest",
    "check_content_digest_field",
    "check_coverage",
    "check_signature_params",
    "field_lines",
    "parse_signature_headers",
    "require_known_key",
    "require_usable_key",
    "signature_bytes",
    "single_member",
]

_ED25519_SIGNATURE_BYTES: Final = 64
_PARAMETERS: Final = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


def field_lines(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in headers if field.lower() == name]


# --- parsing ------------------------------------------------------------------------------


def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key!r}")


def single_member(field: str, value: str) -> tuple[str, Any]:
    if len(value) > SIGNATURE_FIELD_BYTES_MAX:
        raise SignatureInvalid(f"{field} is longer than {SIGNATURE_FIELD_BYTES_MAX} bytes")
    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureInvalid(
            f"{field} is not a valid RFC 8941 dictionary (or repeats a key or parameter)"
        ) from exc
    if not isinstance(parsed, dict) or len(parsed) != 1:
        count = len(parsed) if isinstance(parsed, dict) else 0
        raise SignatureInvalid(f"{field} must hold exactly one signature; it holds {count}")
    ((label, member),) = parsed.items()
    return str(label), member


def signature_bytes(member: Any) -> bytes:
    value = member[0]
    if not isinstance(value, bytes) or len(value) != _ED25519_SIGNATURE_BYTES:
        raise SignatureInvalid("Signature must be a byte sequence holding a 64-byte Ed25519 value")
    return value


def _components(member: Any) -> tuple[tuple[str, ...], dict[str, object]]:
    items, params = member
    if not isinstance(items, list):
        raise SignatureInvalid("Signature-Input must be an inner list of covered components")
    if len(items) > COVERED_COMPONENTS_MAX:
        raise SignatureInvalid(f"a signature may cover at most {COVERED_COMPONENTS_MAX} components")
    names: list[str] = []
    for value, component_params in items:
        if type(value) is not str or value != value.lower():
            raise SignatureInvalid("covered components must be lower-case quoted strings")
        if component_params:
            raise SignatureInvalid(
                f'component parameters (on "{value}") are not part of the {SIGNATURE_TAG} profile'
            )
        if value in names:
            raise SignatureInvalid(f'component "{value}" is covered twice')
        if value == "@signature-params":  # RFC 9421 §2.3: never a covered component
            raise SignatureInvalid('"@signature-params" cannot be a covered component')
        names.append(value)
    return tuple(names), dict(params)


def parse_signature_headers(headers: Sequence[tuple[str, str]]) -> ParsedSignature:
    """The request's single signature, parsed (rule 1).

    Raises SignatureMissing when either header is absent, SignatureInvalid when either is
    repeated, too long, not an RFC 8941 dictionary, not exactly one member, or the labels
    differ, or when a member has the wrong shape.
    """
    inputs = field_lines(headers, "signature-input")
    signatures = field_lines(headers, "signature")
    if not inputs or not signatures:
        raise SignatureMissing("the request needs both Signature-Input and Signature (RFC 9421)")
    if len(inputs) > 1 or len(signatures) > 1:
        raise SignatureInvalid("Signature-Input and Signature must each be sent exactly once")
    input_label, input_member = single_member("Signature-Input", inputs[0])
    signature_label, signature_member = single_member("Signature", signatures[0])
    if input_label != signature_label:
        raise SignatureInvalid(
            f"labels differ: Signature-Input has {input_label!r}, Signature {signature_label!r}"
        )
    components, params = _components(input_member)
    return ParsedSignature(input_label, components, params, signature_bytes(signature_member))


# --- the profile's rules --------------------------------------------------------------------


def _string_param(params: Mapping[str, object], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise SignatureInvalid(f"the signature needs a {name} parameter")
    if type(value) is not str:
        raise SignatureInvalid(f"the {name} parameter must be a string")
    return value


def _integer_param(params: Mapping[str, object], name: str) -> int:
    value = params.get(name)
    if type(value) is not int:
        raise SignatureInvalid(f"the signature needs {name} as an integer (Unix seconds)")
    return value


def check_signature_params(parsed: ParsedSignature, *, now: int) -> SignatureParams:
    """The profile's parameters and clock window (rules 2 and 3); `now` is Unix seconds."""
    params = parsed.params
    unknown = sorted(set(params) - _PARAMETERS)
    if unknown:
        raise SignatureInvalid(f"unknown signature parameter(s): {', '.join(unknown)}")
    created = _integer_param(params, "created")
    key_id = _string_param(params, "keyid")
    nonce = _string_param(params, "nonce")
    if _string_param(params, "tag") != SIGNATURE_TAG:
        raise SignatureInvalid(f'the tag parameter must be "{SIGNATURE_TAG}"')
    if "alg" in params and params["alg"] != "ed25519":
        raise SignatureInvalid('the alg parameter, if given, must be "ed25519"')
    if not 1 <= len(key_id) <= KEY_ID_LEN_MAX:
        raise SignatureInvalid(f"keyid must be 1-{KEY_ID_LEN_MAX} characters")
    if not NONCE_LEN_MIN <= len(nonce) <= NONCE_LEN_MAX:
        raise SignatureInvalid(
            f"nonce is {len(nonce)} characters; it must be {NONCE_LEN_MIN}-{NONCE_LEN_MAX}"
        )
    if "expires" in params and _integer_param(params, "expires") <= now:
        raise SignatureExpired(f"expires passed {now - _integer_param(params, 'expires')} s ago")
    if now - created > CREATED_PAST_S_MAX:
        raise SignatureExpired(
            f"created is {now - created} s old; the window is {CREATED_PAST_S_MAX} s"
        )
    if created - now > CREATED_FUTURE_S_MAX:
        raise SignatureExpired(
            f"created is {created - now} s in the future; "
            f"at most {CREATED_FUTURE_S_MAX} s of clock skew is accepted"
        )
    return SignatureParams(created=created, key_id=key_id, nonce=nonce)


def check_coverage(parsed: ParsedSignature, request: IncomingRequest) -> None:
    """Required coverage (rule 4) and covered headers present exactly once (rule 5)."""
    required = list(REQUIRED_COMPONENTS)
    if request.body:
        if not field_lines(request.headers, "content-digest"):
            raise SignatureInsufficient(
                "a request body needs a Content-Digest header (sha-256 or sha-512), "
                "covered by the signature"
            )
        required += BODY_COMPONENTS
    if request.method.upper() == "POST":  # @method itself stays case-sensitive (RFC 9421)
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
        count = len(field_lines(request.headers, name))
        if count != 1:
            raise SignatureInvalid(
                f'covered header "{name}" appears {count} times; it must appear exactly once'
            )


def _digest_members(request: IncomingRequest) -> tuple[str, dict[str, Any]] | None:
    """The Content-Digest header parsed, with at least one supported member; no body read."""
    lines = field_lines(request.headers, "content-digest")
    if not lines:
        return None
    if len(lines) > 1 or len(lines[0]) > CONTENT_DIGEST_FIELD_BYTES_MAX:
        raise DigestMismatch("send one Content-Digest header of reasonable size")
    value = normalize_header_value(lines[0])
    try:
        members: Any = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (ValueError, UnicodeEncodeError) as exc:
        raise DigestMismatch("Content-Digest is not a valid RFC 8941 dictionary") from exc
    supported = {name: members[name] for name in members if name in _DIGESTS}
    if not supported:
        raise DigestMismatch("Content-Digest needs a sha-256 or sha-512 member")
    return value, supported


def check_content_digest_field(request: IncomingRequest) -> None:
    """The Content-Digest header's shape (rule 6 without the body): cheap, before the body."""
    _digest_members(request)


def check_content_digest(request: IncomingRequest) -> str | None:
    """Content-Digest against the raw body bytes (rule 6); returns the header value if any.

    Must run on the raw bytes before anything parses the body.
    """
    found = _digest_members(request)
    if found is None:
        return None
    value, supported = found
    for name, member in supported.items():
        expected = _DIGESTS[name](request.body).digest()
        digest = member[0]
        if not isinstance(digest, bytes) or not hmac.compare_digest(digest, expected):
            raise DigestMismatch(f"the {name} Content-Digest does not match the body sent")
    return value


def require_known_key(record: KeyRecord | None, key_id: str) -> KeyRecord:
    if record is None:
        raise KeyUnknown(f"no key is registered with keyid {key_id!r}")
    return record


def require_usable_key(record: KeyRecord, key_id: str) -> KeyRecord:
    """Revoked key, suspended partner: told only to a caller whose signature verified,
    so the status of someone else's key is never revealed to a stranger."""
    if not record.key_active:
        raise KeyRevoked(f"key {key_id!r} has been revoked")
    if record.partner_terminated:
        raise PartnerTerminated("the partner this key belongs to has been terminated")
    if not record.partner_active:
        raise PartnerSuspended("the partner this key belongs to is suspended")
    return record
