"""The request path's Ed25519 check (libsodium, `partners.signing._ed25519.verifies`) gives
the verdict of the reference's (OpenSSL, through `cryptography`) on valid signatures and on
every way of spoiling one: a flipped bit, another message, another key, S + L (the same
signature, malleated), zeros."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from partners.signing._ed25519 import verifies

# The order of the base point: S must be below it (RFC 8032 §5.1.7).
L = 2**252 + 27742317777372353535851937790883648493


def _openssl(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _malleated(signature: bytes) -> bytes:
    """The signature with S + L: the same point equation, a non-canonical scalar."""
    s = int.from_bytes(signature[32:], "little") + L
    return signature[:32] + s.to_bytes(32, "little")


seeds = st.binary(min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(seed=seeds, other=seeds, message=st.binary(max_size=600), bit=st.integers(0, 511))
def test_libsodium_and_openssl_agree(seed: bytes, other: bytes, message: bytes, bit: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public_key = key.public_key().public_bytes_raw()
    signature = key.sign(message)
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    other_key = Ed25519PrivateKey.from_private_bytes(other).public_key().public_bytes_raw()
    cases = {
        "valid": (public_key, signature, message),
        "a bit flipped": (public_key, bytes(flipped), message),
        "another message": (public_key, signature, message + b"x"),
        "another key": (other_key, signature, message),
        "S + L": (public_key, _malleated(signature), message),
        "zeros": (public_key, bytes(64), message),
    }
    verdicts = {name: (verifies(*case), _openssl(*case)) for name, case in cases.items()}
    assert all(ours == reference for ours, reference in verdicts.values()), verdicts
    assert verdicts["valid"] == (True, True)
    assert verdicts["S + L"] == (False, False)
    if seed != other:
        assert verdicts["another key"] == (False, False)


@pytest.mark.parametrize(("key_bytes", "signature_bytes"), [(31, 64), (33, 64), (32, 63), (32, 65)])
def test_a_key_or_signature_of_the_wrong_length_is_a_bug_not_a_verdict(
    key_bytes: int, signature_bytes: int
) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        verifies(bytes(key_bytes), bytes(signature_bytes), b"message")
