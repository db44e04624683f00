"""Who is calling: partners (RFC 9421 signatures), operators and members (bearer tokens).

Each function here is a litestar dependency: a controller declares `partner:
PartnerCaller`, `admin: OperatorIdentity`, `staff: OperatorIdentity` or `member:
MemberCaller` and gets an authenticated caller or the request ends with 400/401/403/429.

Partner requests are verified on the raw ASGI request: the path as sent (`raw_path`,
percent-encoding intact), the headers with duplicates, and the body bytes before any
JSON parsing. Cheap checks (the Idempotency-Key, header shape, the time window) come
before the database and the cryptography; nonces are recorded in PostgreSQL, and if
that fails the request fails (closed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request

from exchange import metrics
from exchange.errors import ExchangeError, Forbidden, IdempotencyKeyMissing, Unauthorized
from exchange.operators import OperatorIdentity, authenticate_operator, hash_token
from exchange.runtime import Services, services_of
from exchange.service import Idempotency, SignatureProof
from partners import store
from partners.signing import IncomingRequest, verify_request

__all__ = [
    "Caller",
    "MemberCaller",
    "PartnerCaller",
    "admin_caller",
    "bearer_token",
    "member_caller",
    "member_or_partner_caller",
    "partner_caller",
    "staff_caller",
]

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


@dataclass(frozen=True, slots=True)
class MemberCaller:
    member_id: str


@dataclass(frozen=True, slots=True)
class Caller:
    """Either a signed partner or a member token (for endpoints open to both)."""

    partner_id: str | None = None
    member_id: str | None = None


def _headers(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in request.scope["headers"]
    ]


def _idempotency_key(method: str, headers: list[tuple[str, str]]) -> str | None:
    values = [value for name, value in headers if name == "idempotency-key"]
    if method != "POST":
        return None
    if len(values) != 1 or not _IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise IdempotencyKeyMissing(
            "Every POST needs exactly one Idempotency-Key header of 1-255 printable ASCII "
            "characters; reuse it when you retry the same request."
        )
    return values[0]


def _fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same request' for idempotency: method, path, body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("latin-1"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def partner_caller(request: Request[Any, Any, Any]) -> PartnerCaller:
    """Verify the request's signature per contract §2.1 and return the calling partner."""
    services = services_of(request)
    scope = request.scope
    method = scope["method"]
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    headers = _headers(request)
    key = _idempotency_key(method, headers)
    body = await request.body()
    try:
        verified = await verify_request(
            IncomingRequest(method=method, path=path, query=query, headers=headers, body=body),
            authority=services.settings.authority,
            now=int(services.clock.now().timestamp()),
            resolve_key=services.gateway.resolve_key,
            record_nonce=lambda key_id, nonce, created: _record_nonce(
                services, key_id, nonce, created
            ),
        )
    except ExchangeError as exc:
        metrics.SIGNATURE_FAILURES.labels(exc.code).inc()
        raise
    await services.limiter.check("partner", verified.key_id)
    scope["state"]["caller_log"] = {"partner_id": verified.partner_id, "key_id": verified.key_id}
    proof = SignatureProof(
        key_id=verified.key_id,
        signature_input=verified.signature_input,
        signature=verified.signature,
        content_digest=verified.content_digest,
        signature_base=verified.signature_base,
    )
    idempotency = Idempotency(key, _fingerprint(method, path, body)) if key else None
    return PartnerCaller(verified.partner_id, verified.key_id, body, proof, idempotency)


async def _record_nonce(services: Services, key_id: str, nonce: str, created: int) -> bool:
    # A nonce must be remembered for as long as its signature can still be accepted, i.e.
    # until `created` + 300 s. `created` may be up to 30 s ahead of the server clock, so
    # the row is stamped with the later of the two: purging rows older than now - 300 s
    # (`store.purge_nonces`) then never forgets a nonce whose signature is still valid.
    seen_at = max(services.clock.now(), datetime.fromtimestamp(created, UTC))
    return await services.gateway.record_nonce(key_id, nonce, seen_at)


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Use 'Authorization: Bearer <token>'.")
    return token.strip()


async def _operator(request: Request[Any, Any, Any], roles: tuple[str, ...]) -> OperatorIdentity:
    services = services_of(request)
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("An operator bearer token is required.")
    identity = await authenticate_operator(services.engine, token)
    if identity is None:
        raise Unauthorized("Unknown or revoked operator token.")
    await services.limiter.check("operator", identity.token_id)
    request.scope["state"]["caller_log"] = {"operator": identity.token_id, "role": identity.role}
    if identity.role not in roles:
        raise Forbidden(f"This needs the {' or '.join(roles)} role; the token is {identity.role}.")
    return identity


async def admin_caller(request: Request[Any, Any, Any]) -> OperatorIdentity:
    return await _operator(request, ("admin",))


async def staff_caller(request: Request[Any, Any, Any]) -> OperatorIdentity:
    """Admin or finance: read-only access to settlement and reports."""
    return await _operator(request, ("admin", "finance"))


async def member_caller(request: Request[Any, Any, Any]) -> MemberCaller:
    services = services_of(request)
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("A member bearer token is required.")
    async with services.engine.connect() as conn:
        member_id = await store.find_session(conn, hash_token(token), services.clock.now())
    if member_id is None:
        raise Unauthorized("Unknown or expired member token.")
    await services.limiter.check("member", hash_token(token)[:16])
    request.scope["state"]["caller_log"] = {"member_id": member_id}
    return MemberCaller(member_id)


async def member_or_partner_caller(request: Request[Any, Any, Any]) -> Caller:
    """Endpoints open to both: a bearer token means a member, otherwise a signed partner."""
    if request.headers.get("authorization") is not None:
        return Caller(member_id=(await member_caller(request)).member_id)
    return Caller(partner_id=(await partner_caller(request)).partner_id)
