"""The coalition-v1 profile of RFC 9421 HTTP message signatures (contract §2.1).

Division of labour. The `http-message-signatures` library builds signature bases and
runs Ed25519: `HTTPMessageSigner` signs, `HTTPMessageVerifier` verifies, both through
`ComponentResolver`, our implementation of the library's component-resolver extension
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
6. Key: unknown → key_unknown.
7. Signature base (RFC 9421 §2.5) and Ed25519 with the registered key; the algorithm comes
   from the key record, never from the request (else signature_invalid). A stored key
   that is not acceptable (small order, see `_ed25519`) is key_revoked.
8. Only a caller whose signature verified learns the key's status: inactive →
   key_revoked, partner inactive → partner_suspended.
   Steps 1-8 (`verify_headers`) need no body: the base covers the Content-Digest header.
   The server rate-limits the key here, before it reads the body or writes anything.
9. Content-Digest (whenever present, and so always with a body) is checked against the raw
   body bytes: every `sha-256` / `sha-512` member must match and at least one must be
   there; members of other algorithms are ignored (RFC 9530 §2) (else digest_mismatch).
   Coverage is checked again with the body known.
10. Only then is `(keyid, nonce)` recorded; a second use → nonce_replayed.

No error detail contains a signature base, a key or a stack trace.

The server verifies with `lean_verify_headers` / `lean_verify_body` (`_lean`): the same
rules in the same order, but canonically spelled `Signature-Input`, `Signature` and
`Content-Digest` fields (what `sign_request` and ordinary RFC 9421 clients send) are
read with anchored patterns, and the `@signature-params` line is the header's own text,
which for a canonical field is exactly its RFC 8941 serialization. Anything else is
handed to `verify_headers` / `verify_body`, which stay the reference; a property test
(`tests/unit/test_lean_signing.py`) checks the two agree on generated requests. The lean
path's Ed25519 check is libsodium's (`_ed25519.verifies`, five eighths of OpenSSL's CPU,
the same verdicts).
"""

from partners.signing._base import signature_base
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
    KeyResolver,
    MessageSignature,
    NonceRecorder,
    ParsedSignature,
    SignatureParams,
    VerifiedSignature,
)
from partners.signing._ed25519 import is_acceptable_public_key
from partners.signing._keys import (
    b64url_decode,
    b64url_encode,
    content_digest,
    decode_public_key,
    decode_signature_member,
    generate_keypair,
    load_private_key,
    public_key_b64url,
)
from partners.signing._lean import LeanHeaders, lean_verify_body, lean_verify_headers
from partners.signing._parse import (
    check_content_digest,
    check_coverage,
    check_signature_params,
    parse_signature_headers,
)
from partners.signing._sign import sign_components, sign_request
from partners.signing._verify import (
    VerifiedHeaders,
    verify_body,
    verify_headers,
    verify_message_signature,
    verify_request,
    verify_signature_base,
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
    "LeanHeaders",
    "MessageSignature",
    "NonceRecorder",
    "ParsedSignature",
    "SignatureParams",
    "VerifiedHeaders",
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
    "is_acceptable_public_key",
    "lean_verify_body",
    "lean_verify_headers",
    "load_private_key",
    "parse_signature_headers",
    "public_key_b64url",
    "sign_components",
    "sign_request",
    "signature_base",
    "verify_body",
    "verify_headers",
    "verify_message_signature",
    "verify_request",
    "verify_signature_base",
]
