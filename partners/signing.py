"""The coalition-v1 profile of RFC 9421 HTTP message signatures (contract §2.1).

Division of labour. The `http-message-signatures` library builds signature bases and
runs Ed25519: `HTTPMessageSigner` signs, `HTTPMessageVerifier` verifies, both through
`_ComponentResolver`, our implementation of the library's component-resolver extension
point, which gives `@authority` as the exchange's configured host, `@path` and `@query`
exactly as they were sent (percent-encoding preserved, never decoded or re-encoded), and
header fields per RFC 9421 §2.1. Everything the library cannot express is ours: one
signature only, required parameters and `tag`, the clock window against an injected
`now`, required coverage, duplicated covered headers, the Content-Digest check, key
status, and replay.

Verification order, cheapest first, so unauthenticated traffic costs neither a key lookup
nor cryptography; each step raises the error named in `partners.errors`:

1. `Signature-Input` / `Signature`: present (else signature_missing), once each, ≤ 8 KiB,
   valid RFC 8941 dictionaries with one and the same label (else signature_invalid).
2. Parameters `created`, `keyid`, `nonce` (16-128 chars) and `tag="coalition-v1"` are
   required; `alg`, if given, is `"ed25519"`; any other parameter is refused
   (signature_invalid). A passed `expires` → signature_expired.
3. Window: `now - 300 <= created <= now + 30` (both ends inclusive), else signature_expired.
4. Coverage: `@method @authority @path @query`; with a body also `content-type
   content-digest`; on POST also `idempotency-key` (else signature_insufficient). A body
   with no Content-Digest header at all is also signature_insufficient: the signature
   cannot cover a digest that is not there. Component parameters (`;sf`, `;key`, `;req`,
   ...) and derived components other than the four above are outside the profile
   (signature_invalid).
5. Every covered header appears exactly once (else signature_invalid).
6. Content-Digest (whenever present, and so always with a body) is checked against the raw
   body bytes: every `sha-256` / `sha-512` member must match and at least one must be
   there; members of other algorithms are ignored (RFC 9530 §2) (else digest_mismatch).
7. Key: unknown → key_unknown, inactive → key_revoked, partner inactive → partner_suspended.
8. Signature base (RFC 9421 §2.5) and Ed25519 with the registered key; the algorithm comes
   from the key record, never from the request (else signature_invalid).
9. Only then is `(keyid, nonce)` recorded; a second use → nonce_replayed.

No error detail contains a signature base, a key or a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import http_sf
import httpx
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    MappingKeyResolver,
)
from http_message_signatures.algorithms import ED25519
from http_message_signatures.structures import normalize_header_value
from http_sf.compat import Item

from exchange.errors import InvariantViolation
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

__all__ = [
    "BODY_COMPONENTS",
    "CONTENT_DIGEST_FIELD_BYTES_MAX",
    "COVERED_COMPONENTS_MAX",
    "CREATED_FUTURE_S_MAX",
    "CREATED_PAST_S_MAX",
    "KEY_ID_LEN_MAX",
    "NONCE_LEN_MAX",
    "NONCE_LEN_MIN",
    "POST_COMPONENTS",
    "REQUIRED_COMPONENTS",
    "SIGNATURE_FIELD_BYTES_MAX",
    "SIGNATURE_TAG",
    "IncomingRequest",
    "KeyRecord",
    "KeyResolver",
    "MessageSignature",
    "NonceRecorder",
    "ParsedSignature",
    "SignatureParams",
    "VerifiedSignature",
    "b64url_decode",
    "b64url_encode",
    "check_content_digest",
    "check_coverage",
    "check_signature_params",
    "content_digest",
    "decode_public_key",
    "decode_signature_member",
    "generate_keypair",
    "load_private_key",
    "parse_signature_headers",
    "public_key_b64url",
    "sign_components",
    "sign_request",
    "signature_base",
    "verify_message_signature",
    "verify_request",
    "verify_signature_base",
]

SIGNATURE_TAG: Final = "coalition-v1"
CREATED_PAST_S_MAX: Final = 300
CREATED_FUTURE_S_MAX: Final = 30
NONCE_LEN_MIN: Final = 16
NONCE_LEN_MAX: Final = 128
KEY_ID_LEN_MAX: Final = 128
SIGNATURE_FIELD_BYTES_MAX: Final = 8192
CONTENT_DIGEST_FIELD_BYTES_MAX: Final = 4096
COVERED_COMPONENTS_MAX: Final = 32
REQUIRED_COMPONENTS: Final = ("@method", "@authority", "@path", "@query")
BODY_COMPONENTS: Final = ("content-type", "content-digest")
POST_COMPONENTS: Final = ("idempotency-key",)

_ED25519_SIGNATURE_BYTES: Final = 64
_ED25519_KEY_BYTES: Final = 32
_PARAMETERS: Final = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_SIGNATURE_PARAMS: Final = '"@signature-params"'  # the base's last line, as the library keys it


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the key registry knows about a `keyid`; `public_key` is the raw 32-byte key."""

    key_id: str
    partner_id: str
    public_key: bytes
    key_active: bool
    partner_active: bool


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A request as it arrived, before anything parsed its body.

    `path` is the raw path exactly as sent (ASGI `raw_path` decoded as latin-1, percent
    escapes intact); `query` is the raw query string without `?` (`""` when none);
    `headers` are lower-cased names in arrival order with duplicates preserved.
    """

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    """The one signature a request carries, structurally valid, its rules not yet checked."""

    label: str
    components: tuple[str, ...]
    params: Mapping[str, object]
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignatureParams:
    """The profile's parameters, each validated."""

    created: int
    key_id: str
    nonce: str


@dataclass(frozen=True, slots=True)
class MessageSignature:
    """A signature that verified cryptographically (RFC 9421 only, no profile rules).

    `signature_base` is exactly the byte string Ed25519 verified; `signature_input` and
    `signature` are the label's members re-serialized (RFC 8941), as covered by the base.
    """

    label: str
    signature_input: str
    signature: str
    signature_base: bytes


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A request signature that passed every rule of the profile, ready to be stored.

    `signature_base` plus `signature` plus the key's public key re-verify the request
    later (`verify_signature_base`), so a disputed posting can be checked years on.
    """

    key_id: str
    partner_id: str
    label: str
    created: int
    nonce: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes


KeyResolver = Callable[[str], Awaitable[KeyRecord | None]]
NonceRecorder = Callable[[str, str, int], Awaitable[bool]]


# --- keys and encodings ---------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url decoding; padding optional. Raises ValueError on any bad character."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not valid base64url") from exc


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair: (private key, public key), each base64url of the raw 32 bytes."""
    private_key = Ed25519PrivateKey.generate()
    return b64url_encode(private_key.private_bytes_raw()), public_key_b64url(private_key)


def load_private_key(b64url: str) -> Ed25519PrivateKey:
    """The Ed25519 private key from base64url of its raw 32 bytes; ValueError otherwise."""
    raw = b64url_decode(b64url)
    if len(raw) != _ED25519_KEY_BYTES:
        raise ValueError("an Ed25519 private key is 32 raw bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


def decode_public_key(b64url: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as base64url; ValueError otherwise."""
    raw = b64url_decode(b64url)
    if len(raw) != _ED25519_KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 raw bytes")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


def public_key_b64url(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64url of the raw public key: what an admin registers for the partner."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url_encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def content_digest(body: bytes) -> str:
    """The RFC 9530 Content-Digest field value for `body`: `sha-256=:<base64>:`."""
    return str(ContentDigest.create(body))


def decode_signature_member(signature: str) -> bytes:
    """The raw signature bytes from a stored one-member Signature value (`label=:...:`)."""
    _, member = _single_member("Signature", signature)
    return _signature_bytes(member)


# --- the component resolver shared by signer and verifier -------------------------------------


@dataclass(frozen=True, slots=True)
class _Message:
    """The view of a request the library's signer and verifier work on."""

    method: str
    authority: str
    path: str
    query: str
    headers: Any  # a dict when signing (the library writes to it), a _FieldLines when verifying


@dataclass(frozen=True, slots=True)
class _FieldLines:
    """Read-only header lines in arrival order, duplicates kept (all the verifier reads)."""

    lines: Sequence[tuple[str, str]]

    def items(self) -> Sequence[tuple[str, str]]:
        return self.lines


class _ComponentResolver:
    """Component values per RFC 9421 §2.1-2.2 for the components this profile allows.

    `@path` and `@query` are the request's raw spelling; `@authority` is the exchange's
    configured host, never the request's Host header. Header field values are each
    trimmed and folded (§2.1) and multiple lines joined with ", " (the profile refuses
    duplicates before this point, but the resolver itself stays RFC-exact).
    """

    def __init__(self, message: _Message) -> None:
        self._message = message

    def resolve(self, component: Item) -> str:
        name = component.value
        if component.params or not isinstance(name, str):
            raise HTTPMessageSignaturesException("component parameters are not supported")
        message = self._message
        derived = {
            "@method": message.method,
            "@authority": message.authority,
            "@path": message.path or "/",
            "@query": "?" + message.query,
        }
        if name.startswith("@"):
            if name not in derived:
                raise HTTPMessageSignaturesException(f"derived component {name} not supported")
            return derived[name]
        lines = _field_lines(list(message.headers.items()), name)
        if not lines:
            raise HTTPMessageSignaturesException(f"covered header {name} absent")
        return ", ".join(normalize_header_value(line) for line in lines)


class _WindowlessVerifier(HTTPMessageVerifier):
    """The library's verifier minus its clock checks, which read the wall clock.

    Our profile checks `created`/`expires` against the caller's `now` before this runs.
    """

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


def _field_lines(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in headers if field.lower() == name]


# --- parsing ------------------------------------------------------------------------------


def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key!r}")


def _single_member(field: str, value: str) -> tuple[str, Any]:
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


def _signature_bytes(member: Any) -> bytes:
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
    inputs = _field_lines(headers, "signature-input")
    signatures = _field_lines(headers, "signature")
    if not inputs or not signatures:
        raise SignatureMissing("the request needs both Signature-Input and Signature (RFC 9421)")
    if len(inputs) > 1 or len(signatures) > 1:
        raise SignatureInvalid("Signature-Input and Signature must each be sent exactly once")
    input_label, input_member = _single_member("Signature-Input", inputs[0])
    signature_label, signature_member = _single_member("Signature", signatures[0])
    if input_label != signature_label:
        raise SignatureInvalid(
            f"labels differ: Signature-Input has {input_label!r}, Signature {signature_label!r}"
        )
    components, params = _components(input_member)
    return ParsedSignature(input_label, components, params, _signature_bytes(signature_member))


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
        if not _field_lines(request.headers, "content-digest"):
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
        count = len(_field_lines(request.headers, name))
        if count != 1:
            raise SignatureInvalid(
                f'covered header "{name}" appears {count} times; it must appear exactly once'
            )


def check_content_digest(request: IncomingRequest) -> str | None:
    """Content-Digest against the raw body bytes (rule 6); returns the header value if any.

    Must run on the raw bytes before anything parses the body.
    """
    lines = _field_lines(request.headers, "content-digest")
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
    supported = [name for name in members if name in _DIGESTS]
    if not supported:
        raise DigestMismatch("Content-Digest needs a sha-256 or sha-512 member")
    for name in supported:
        expected = _DIGESTS[name](request.body).digest()
        digest = members[name][0]
        if not isinstance(digest, bytes) or not hmac.compare_digest(digest, expected):
            raise DigestMismatch(f"the {name} Content-Digest does not match the body sent")
    return value


def _key_record(record: KeyRecord | None, key_id: str) -> KeyRecord:
    if record is None:
        raise KeyUnknown(f"no key is registered with keyid {key_id!r}")
    if not record.key_active:
        raise KeyRevoked(f"key {key_id!r} has been revoked")
    if not record.partner_active:
        raise PartnerSuspended("the partner this key belongs to is suspended")
    return record


# --- verification ---------------------------------------------------------------------------


def verify_message_signature(
    request: IncomingRequest, *, authority: str, public_key: bytes | Ed25519PublicKey
) -> MessageSignature:
    """RFC 9421 verification of the request's single signature with an Ed25519 key.

    Applies only the structural checks of `parse_signature_headers` (one signature, plain
    components, 64-byte value); no parameter, clock, coverage, digest or key-status rules:
    `verify_request` applies those first. The base is
    built by the library's verifier through `_ComponentResolver`, then re-checked here
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
    verifier = _WindowlessVerifier(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(public_keys={str(key_id): key}, private_keys={}),
        component_resolver_class=_ComponentResolver,
    )
    message = _Message(
        request.method, authority, request.path, request.query, _FieldLines(request.headers)
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


def signature_base(
    parsed: ParsedSignature, request: IncomingRequest, *, authority: str
) -> tuple[bytes, str]:
    """The RFC 9421 §2.5 signature base of `parsed` over `request`, and its
    `Signature-Input` member (`label=(...);params`).

    Built in one pass from the already-parsed signature: this is the verification hot
    path, and going through the library's verifier would parse the headers again and
    resolve every component through its generic machinery. Tests check that this base
    is byte for byte what http-message-signatures builds for the same request.
    """
    derived = {
        "@method": request.method,
        "@authority": authority,
        "@path": request.path or "/",
        "@query": "?" + request.query,
    }
    lines = []
    for name in parsed.components:
        if name.startswith("@"):
            value = derived.get(name)
            if value is None:
                raise SignatureInvalid(f"derived component {name} is not part of the profile")
        else:
            fields = _field_lines(request.headers, name)
            if not fields:
                raise SignatureInvalid(f"covered header {name} is absent")
            value = ", ".join(normalize_header_value(line) for line in fields)
        lines.append(f'"{name}": {value}')
    member = http_sf.ser(
        {parsed.label: ([(name, {}) for name in parsed.components], dict(parsed.params))}
    )
    lines.append(f'"@signature-params": {member.split("=", 1)[1]}')
    try:
        return "\n".join(lines).encode("ascii"), member
    except UnicodeEncodeError:
        raise SignatureInvalid("covered components must have ASCII values") from None


async def verify_request(
    request: IncomingRequest,
    *,
    authority: str,
    now: int,
    resolve_key: KeyResolver,
    record_nonce: NonceRecorder,
) -> VerifiedSignature:
    """Every rule of the profile, in the order of the module docstring.

    `authority` is the exchange's public host, lower-cased, port only when not the
    scheme's default; `now` is the server clock in Unix seconds. Exceptions from
    `resolve_key` and `record_nonce` propagate (the caller fails closed).
    """
    parsed = parse_signature_headers(request.headers)
    params = check_signature_params(parsed, now=now)
    check_coverage(parsed, request)
    digest = check_content_digest(request)
    record = _key_record(await resolve_key(params.key_id), params.key_id)
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
    if not await record_nonce(params.key_id, params.nonce, params.created):
        raise NonceReplayed(
            "this (keyid, nonce) pair was already used; sign each attempt with a new nonce"
        )
    return VerifiedSignature(
        key_id=params.key_id,
        partner_id=record.partner_id,
        label=parsed.label,
        created=params.created,
        nonce=params.nonce,
        signature_input=signature_input,
        signature=http_sf.ser({parsed.label: (parsed.signature, {})}),
        content_digest=digest,
        signature_base=base,
    )


# --- signing --------------------------------------------------------------------------------


def sign_components(
    *,
    method: str,
    authority: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    components: Sequence[str],
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int,
    nonce: str | None,
    tag: str | None = SIGNATURE_TAG,
    label: str = "sig1",
) -> dict[str, str]:
    """`Signature-Input` and `Signature` for exactly the given components and parameters.

    The low-level signer (`sign_request` chooses the profile's components). Parameters are
    written in the order created, keyid, nonce, tag; no `alg`. `path`/`query` are the raw
    wire spelling; `headers` must hold every covered header.
    """
    fields = {name.lower(): value for name, value in headers.items()}
    signer = HTTPMessageSigner(
        signature_algorithm=ED25519,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: private_key}),
        component_resolver_class=_ComponentResolver,
    )
    message = _Message(method, authority, path, query, fields)
    signer.sign(
        message,
        key_id=key_id,
        created=datetime.fromtimestamp(created, UTC),
        nonce=nonce,
        label=label,
        tag=tag,
        include_alg=False,
        covered_component_ids=tuple(components),
        use_existing_digest="content-digest" in fields,
    )
    return {"Signature-Input": fields["Signature-Input"], "Signature": fields["Signature"]}


def sign_request(
    *,
    method: str,
    url: str | httpx.URL,
    headers: Mapping[str, str],
    body: bytes | None,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int | None = None,
    nonce: str | None = None,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers to add to a request so the exchange accepts it.

    Returns Content-Digest (sha-256; only when `body` is non-empty) plus Signature-Input
    and Signature covering `@method @authority @path @query`, `content-type
    content-digest` with a body, and `idempotency-key` when that header is present.
    `@path`/`@query` are taken from the URL's raw (percent-encoded) form, exactly as httpx
    puts it on the wire. `created` defaults to now, `nonce` to 32 random url-safe chars.
    Raises ValueError when a body has no Content-Type or a POST has no Idempotency-Key.
    """
    wire = httpx.URL(url)
    path, _, query = wire.raw_path.decode("ascii").partition("?")
    fields = {name.lower(): value for name, value in headers.items()}
    components = list(REQUIRED_COMPONENTS)
    added: dict[str, str] = {}
    if body:
        if "content-type" not in fields:
            raise ValueError("a request with a body needs a Content-Type header")
        added["Content-Digest"] = fields["content-digest"] = content_digest(body)
        components += BODY_COMPONENTS
    if "idempotency-key" in fields:
        components += POST_COMPONENTS
    elif method.upper() == "POST":
        raise ValueError("every POST to the exchange needs an Idempotency-Key header")
    added |= sign_components(
        method=method.upper(),
        authority=wire.netloc.decode("ascii").lower(),
        path=path,
        query=query,
        headers=fields,
        components=components,
        key_id=key_id,
        private_key=private_key,
        created=int(datetime.now(UTC).timestamp()) if created is None else created,
        nonce=secrets.token_urlsafe(24) if nonce is None else nonce,
        label=label,
    )
    return added
