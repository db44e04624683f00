"""Errors of partner authentication (server side) and of the partner client (client side).

Server-side errors subclass the exchange's tree, so `exchange.problems` maps them to
RFC 9457 problem+json like every other operating error. Each carries a stable contract
`code` (§2.1); its `detail` is written for a partner's engineer ("created is 412 s old;
the window is 300 s") and never contains a signature base, a key or a stack trace.

    exchange.errors.ExchangeError
    ├── Unauthorized                    (401 unauthorized)
    │   ├── SignatureMissing            (401 signature_missing)
    │   ├── SignatureInvalid            (401 signature_invalid)
    │   ├── SignatureExpired            (401 signature_expired)
    │   ├── SignatureInsufficient       (401 signature_insufficient)
    │   ├── DigestMismatch              (401 digest_mismatch)
    │   ├── KeyUnknown                  (401 key_unknown)
    │   ├── KeyRevoked                  (401 key_revoked)
    │   └── NonceReplayed               (401 nonce_replayed; defined in exchange.errors,
    │                                    re-exported here: the posting path refuses it too)
    └── Forbidden                       (403 forbidden)
        └── PartnerSuspended            (403 partner_suspended; defined in exchange.errors,
                                         re-exported here: the ledger refuses it too)

    Exception
    └── PartnerAPIError                 (client side: the exchange answered with an error)

`PartnerAPIError` is deliberately *not* an `ExchangeError`: it is raised in a partner's
process by `partners.client` when the exchange answers with a non-2xx response, and must
never be mistaken for an error the exchange itself raised.
"""

from __future__ import annotations

from typing import Any

from exchange.errors import NonceReplayed, PartnerSuspended, PartnerTerminated, Unauthorized

__all__ = [
    "DigestMismatch",
    "KeyRevoked",
    "KeyUnknown",
    "NonceReplayed",
    "PartnerAPIError",
    "PartnerSuspended",
    "PartnerTerminated",
    "SignatureExpired",
    "SignatureInsufficient",
    "SignatureInvalid",
    "SignatureMissing",
]


class SignatureMissing(Unauthorized):
    code = "signature_missing"
    title = "Request signature missing"


class SignatureInvalid(Unauthorized):
    code = "signature_invalid"
    title = "Request signature invalid"


class SignatureExpired(Unauthorized):
    code = "signature_expired"
    title = "Request signature outside its validity window"


class SignatureInsufficient(Unauthorized):
    code = "signature_insufficient"
    title = "Request signature does not cover the required components"


class DigestMismatch(Unauthorized):
    code = "digest_mismatch"
    title = "Content-Digest does not match the request body"


class KeyUnknown(Unauthorized):
    code = "key_unknown"
    title = "Signing key unknown"


class KeyRevoked(Unauthorized):
    code = "key_revoked"
    title = "Signing key revoked"


class PartnerAPIError(Exception):
    """The exchange answered a partner client's request with an error (after any retries).

    `problem` is the decoded RFC 9457 body when the response was `application/problem+json`
    (else `{}`); `code` is its contract code, or `"http_<status>"` when the body had none.
    """

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any]) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem
        super().__init__(f"{status} {code}: {detail}")
