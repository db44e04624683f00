"""The profile's limits, and the records that verification and signing pass around."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

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


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the key registry knows about a `keyid`; `public_key` is the raw 32-byte key."""

    key_id: str
    partner_id: str
    public_key: bytes
    key_active: bool
    partner_active: bool
    partner_terminated: bool = False  # for ever: 403 partner_terminated, not suspended


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
