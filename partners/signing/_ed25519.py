"""Which 32-byte strings are acceptable Ed25519 public keys (pure arithmetic, no I/O).

OpenSSL (behind `cryptography`) verifies against any 32 bytes it is given. For a key of
small order (the identity, the order-2 point, the order-4 and order-8 points) a fixed
signature verifies for *every* message: e.g. R = the identity, S = 0 satisfies
[S]B = R + [k]A when [8]A is the identity and the verifier multiplies by the cofactor,
and similar fixed pairs work for non-cofactored verifiers. Anyone knowing the key id
could then act as the partner, and a partner could register such a key to deny its own
postings later. So a key is accepted only when:

- its encoding is canonical: y < p, and not the "negative zero" x (sign bit set, x = 0);
- it decodes to a point of the curve (x^2 = (y^2 - 1) / (d y^2 + 1) has a root);
- [8]A is not the identity, i.e. A is not one of the 8 points of small order.

The test suite checks the classic list of small-order encodings (as published with
libsodium's `crypto_sign_verify_detached` blocklist and in "Taming the many EdDSAs",
Chalkias et al., 2020) against this function.

`verifies` is the server's Ed25519 check on the request path (`_lean`): libsodium's, through
PyNaCl, at 38 µs a signature where OpenSSL's, through `cryptography`, takes 61 µs on the
bench machine, a tenth of a balance read's server CPU (docs/performance.md, "Twenty-first
round"). Both compute RFC 8032's equation without the cofactor ([S]B - [k]A, encoded and
compared with R byte for byte) and refuse an S of L or more, so a signature the one accepts
the other accepts too, with one exception: libsodium also refuses an R of small order,
which only the key's holder could produce. `cryptography` still does everything else:
keys, signing, and the reference verifier (`_verify`, through `http-message-signatures`).
`tests/unit/test_ed25519_verify.py` checks both give the same verdicts.
"""

from __future__ import annotations

from typing import Final

import nacl.bindings
import nacl.exceptions

__all__ = ["ED25519_KEY_BYTES", "ED25519_SIGNATURE_BYTES", "is_acceptable_public_key", "verifies"]

ED25519_KEY_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64
_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)
_COFACTOR_DOUBLINGS: Final = 3  # [8]A = three doublings

_Point = tuple[int, int]


def _recover_x(y: int, sign: int) -> int | None:
    """RFC 8032 §5.1.3 step 2-4; None when y is not on the curve or the encoding of x is
    not canonical (x = 0 with the sign bit set)."""
    numerator = (y * y - 1) % _P
    denominator = (_D * y * y + 1) % _P
    u_over_v = numerator * pow(denominator, -1, _P) % _P
    x = pow(u_over_v, (_P + 3) // 8, _P)
    if (x * x - u_over_v) % _P != 0:
        x = x * _SQRT_M1 % _P
        if (x * x - u_over_v) % _P != 0:
            return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _double(point: _Point) -> _Point:
    """Affine doubling on -x^2 + y^2 = 1 + d x^2 y^2 (complete: no exceptional case)."""
    x, y = point
    xy = x * y % _P
    dxxyy = _D * xy * xy % _P
    # pow(v, -1, p): the extended Euclidean inverse, ~60x faster than Fermat's v^(p-2).
    x2 = 2 * xy * pow(1 + dxxyy, -1, _P) % _P
    y2 = (y * y + x * x) * pow(1 - dxxyy, -1, _P) % _P
    return x2, y2


def is_acceptable_public_key(raw: bytes) -> bool:
    """Whether `raw` is a canonical encoding of a curve point of large order."""
    if len(raw) != ED25519_KEY_BYTES:
        return False
    value = int.from_bytes(raw, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    if y >= _P:
        return False
    x = _recover_x(y, sign)
    if x is None:
        return False
    point = (x, y)
    for _ in range(_COFACTOR_DOUBLINGS):
        point = _double(point)
    return point != (0, 1)


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is an Ed25519 signature of `message` by `public_key` (above).
    A key or signature of the wrong length is a ValueError: a caller's bug, not a
    forgery."""
    if len(public_key) != ED25519_KEY_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        raise ValueError("an Ed25519 key is 32 bytes and a signature 64")
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
