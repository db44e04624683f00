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
"""

from __future__ import annotations

from typing import Final

__all__ = ["ED25519_KEY_BYTES", "is_acceptable_public_key"]

ED25519_KEY_BYTES: Final = 32
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
