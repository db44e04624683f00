"""Who is calling, for partners: RFC 9421 signatures (contract §2.1) and the
Idempotency-Key of §2.2 (which operator POSTs follow too, `operator_idempotency`).

`partner_caller` is a litestar dependency: a controller declares `partner: PartnerCaller`
and gets the authenticated partner or the request ends with 400/401/403/429. It receives
the process's `services` as a dependency too (provided by `exchange.app`). Operators'
bearer tokens are `exchange.operators.auth`, members' `exchange.members.auth`.

Partner requests are verified on the raw ASGI request: the path as sent (`raw_path`,
percent-encoding intact), the headers with duplicates, and the body bytes before any
JSON parsing. Authentication comes first (contract §2.1 before §2.2): header shape and
the time window, then the key and the cryptography over the headers, then the rate
limit, then the Idempotency-Key, and only then the body and the nonce. Nonces are
recorded in PostgreSQL, and if that fails the request fails (closed).

Where the nonce is written depends on the route (docs/performance.md):

- a posting route (marked `opt={NONCE_IN_POSTING: True}`) carries it, unwritten, in
  `PartnerCaller.nonce` to the ledger, which writes it in the posting's own database
  transaction (one durable commit per batch, not two) and refuses a replay there before
  any effect; a request refused before it reaches the ledger spends it through the
  gateway (`spend_nonce`);
- the balance read (marked `opt={NONCE_IN_READ: True}`) carries it the same way to its
  read, whose one statement writes it, not durably, and reads the book (one round trip,
  not two); a read refused before that statement spends it through the gateway too;
- any other GET writes it through the gateway without waiting for the flush to disk (a
  read has no effect to replay; docs/ledger.md says what a crash can forget);
- every other POST writes it through the gateway, durably, before the handler runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from litestar import Request
from litestar.di import NamedDependency

from exchange import metrics
from exchange.errors import ExchangeError, IdempotencyKeyMissing, NonceReplayed
from exchange.service import Idempotency, NonceClaim, SignatureProof
from exchange.wiring import Services
from partners.signing import IncomingRequest, lean_verify_body, lean_verify_headers

__all__ = [
    "NONCE_IN_POSTING",
    "NONCE_IN_READ",
    "PartnerCaller",
    "header_list",
    "idempotency_key_of",
    "operator_idempotency",
    "partner_caller",
    "request_fingerprint",
    "spend_nonce",
]

# Route option: the ledger writes this request's nonce in the posting's database transaction.
NONCE_IN_POSTING = "nonce_in_posting"
# Route option: the read's own statement writes this request's nonce (not durably).
NONCE_IN_READ = "nonce_in_read"

# 1-255 printable ASCII characters (contract §2.2). Interior spaces are printable too; a
# leading or trailing space could not survive HTTP's whitespace trimming, so it is refused.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


@dataclass(frozen=True, slots=True)
class PartnerCaller:
    partner_id: str
    key_id: str
    body: bytes
    proof: SignatureProof
    idempotency: Idempotency | None
    # Set on posting routes and the balance read only: the nonce the handler's service
    # must still spend (module docstring).
    nonce: NonceClaim | None = None


def header_list(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in request.scope["headers"]
    ]


def idempotency_key_of(method: str, headers: list[tuple[str, str]]) -> str | None:
    if method != "POST":
        return None
    values = [value for name, value in headers if name == "idempotency-key"]
    if len(values) != 1 or not _IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise IdempotencyKeyMissing(
            "Every POST needs exactly one Idempotency-Key header of 1-255 printable ASCII "
            "characters; reuse it when you retry the same request."
        )
    return values[0]


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same request' for idempotency: method, path, body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("latin-1"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def partner_caller(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> PartnerCaller:
    """Verify the request's signature per contract §2.1 and return the calling partner.

    Authentication comes first: the signature is verified over the headers, then the key
    is rate-limited, then the Idempotency-Key is checked, and only then is the body read,
    its digest checked and the nonce written. A stranger's request costs no body read and
    no database write; a flood by one key stops at the limiter.
    """
    scope = request.scope
    method = scope["method"]
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    headers = header_list(request)
    incoming = IncomingRequest(method=method, path=path, query=query, headers=headers, body=b"")
    now = services.clock.now()
    try:
        checked = await lean_verify_headers(
            incoming,
            authority=services.settings.authority,
            now=int(now.timestamp()),
            resolve_key=services.gateway.resolve_key,
        )
    except ExchangeError as exc:
        metrics.SIGNATURE_FAILURES.labels(exc.code).inc()
        raise
    await services.limiter.check("partner", checked.verified.params.key_id)
    key = idempotency_key_of(method, headers)
    body = await request.body() if _may_have_body(headers) else b""
    deferred: list[NonceClaim] = []
    opt = request.route_handler.opt
    carried = bool(opt.get(NONCE_IN_POSTING) or opt.get(NONCE_IN_READ))

    async def record_nonce(key_id: str, nonce: str, created: int) -> bool:
        claim = NonceClaim(key_id, nonce, _nonce_seen_at(now, created))
        if carried:
            deferred.append(claim)
            return True
        return await services.gateway.record_nonce(
            key_id, nonce, claim.seen_at, durable=method != "GET"
        )

    with_body = (
        IncomingRequest(method=method, path=path, query=query, headers=headers, body=body)
        if body
        else incoming
    )
    try:
        verified = await lean_verify_body(checked, with_body, record_nonce=record_nonce)
    except ExchangeError as exc:
        metrics.SIGNATURE_FAILURES.labels(exc.code).inc()
        raise
    scope["state"]["caller_log"] = {"partner_id": verified.partner_id, "key_id": verified.key_id}
    proof = SignatureProof(
        key_id=verified.key_id,
        signature_input=verified.signature_input,
        signature=verified.signature,
        content_digest=verified.content_digest,
        signature_base=verified.signature_base,
    )
    idempotency = Idempotency(key, request_fingerprint(method, path, body)) if key else None
    nonce = deferred[0] if deferred else None
    return PartnerCaller(verified.partner_id, verified.key_id, body, proof, idempotency, nonce)


def _may_have_body(headers: list[tuple[str, str]]) -> bool:
    """False for a request that has no body by HTTP/1.1's framing (neither length nor
    transfer coding: RFC 9112 §6.3), whose empty body need not be read through litestar."""
    return any(name in ("content-length", "transfer-encoding") for name, _ in headers)


def _nonce_seen_at(now: datetime, created: int) -> datetime:
    # A nonce must be remembered for as long as its signature can still be accepted, i.e.
    # until `created` + 300 s. `created` may be up to 30 s ahead of the server clock, so
    # the row is stamped with the later of the two (`now`: when the request's signature
    # was checked): purging rows older than now - 300 s (`store.purge_nonces`) then never
    # forgets a nonce whose signature is still valid.
    return max(now, datetime.fromtimestamp(created, UTC))


async def spend_nonce(
    services: Services, claim: NonceClaim | None, refusal: ExchangeError
) -> NoReturn:
    """A request refused before the service that carries its nonce saw it still spends
    the nonce (durably): raise `refusal`, or `NonceReplayed` if the nonce was already
    spent, since a replay is refused as such whatever else is wrong with it
    (authentication comes first)."""
    if claim is not None and not await services.gateway.record_nonce(
        claim.key_id, claim.nonce, claim.seen_at
    ):
        metrics.SIGNATURE_FAILURES.labels(NonceReplayed.code).inc()
        raise NonceReplayed.spent() from refusal
    raise refusal


def operator_idempotency(request: Request[Any, Any, Any], body: bytes) -> Idempotency:
    """An operator POST's Idempotency-Key (contract §8 follows §2.2 exactly): missing or
    malformed -> 400; the fingerprint is the same method, path and body as a partner's."""
    key = idempotency_key_of("POST", header_list(request))
    if key is None:  # pragma: no cover - POST always yields a key or raises
        raise IdempotencyKeyMissing()
    scope = request.scope
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    return Idempotency(key, request_fingerprint("POST", path, body))
