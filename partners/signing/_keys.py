"""Keys and encodings: base64url, Ed25519 key pairs, Content-Digest, stored signatures."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_message_signatures import ContentDigest

from partners.signing._ed25519 import ED25519_KEY_BYTES, is_acceptable_public_key
from partners.signing._parse import signature_bytes, single_member

__all__ = [
    "b64url_decode",
    "b64url_encode",
    "content_digest",
    "decode_public_key",
    "decode_signature_member",
    "generate_keypair",
    "load_private_key",
    "public_key_b64url",
]

_ED25519_KEY_BYTES: Final = ED25519_KEY_BYTES
_ED25519_KEY_B64_CHARS: Final = 43  # ceil(32 * 4 / 3), unpadded


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
    """The raw 32 bytes of an Ed25519 public key given as base64url; ValueError otherwise.

    The one decoder for partner keys (registration, start-up checks): strict base64url
    (43 characters, optionally one '=' of padding, the unused low bits zero, so that one
    key has exactly one spelling) of a canonical encoding of a point of large order.
    Small-order keys are refused because a fixed signature verifies for any request
    under them (see `_ed25519`).
    """
    text = b64url[:-1] if b64url.endswith("=") else b64url
    if len(text) != _ED25519_KEY_B64_CHARS:
        raise ValueError("an Ed25519 public key is 32 raw bytes: 43 base64url characters")
    raw = b64url_decode(text)
    if b64url_encode(raw) != text:
        raise ValueError("the base64url is not canonical (its unused low bits are not zero)")
    if not is_acceptable_public_key(raw):
        raise ValueError(
            "not an acceptable Ed25519 public key: not a canonical curve point of large order"
        )
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
    _, member = single_member("Signature", signature)
    return signature_bytes(member)
