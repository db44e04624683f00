"""Who is calling, for members: an `Authorization: Bearer <member token>` header.

Member tokens are issued to a partner for a member it serves (`partners.sessions`); only
their SHA-256 is stored. `member_caller` and `member_or_partner_caller` are litestar
dependencies: a controller declares `member: MemberCaller` or `caller: Caller` and gets
the authenticated caller, or the request ends with 401/429 (or, for a partner, whatever
its signature check answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from exchange.errors import Unauthorized
from exchange.operators import hash_token
from exchange.operators.auth import bearer_token, issued_shape
from exchange.service import NonceClaim
from exchange.wiring import Services
from partners import store
from partners.auth import partner_caller
from partners.sessions import MEMBER_TOKEN_SHAPE

__all__ = ["Caller", "MemberCaller", "member_caller", "member_or_partner_caller"]


@dataclass(frozen=True, slots=True)
class MemberCaller:
    member_id: str


@dataclass(frozen=True, slots=True)
class Caller:
    """Either a signed partner or a member token (for endpoints open to both)."""

    partner_id: str | None = None
    member_id: str | None = None
    # A signed partner's nonce, when the route's read must still spend it (partners.auth).
    nonce: NonceClaim | None = None


async def member_caller(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> MemberCaller:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("A member bearer token is required.")
    token_hash = hash_token(issued_shape(token, MEMBER_TOKEN_SHAPE, "member"))
    await services.limiter.check("member", token_hash[:16])
    async with services.engine.connect() as conn:
        member_id = await store.find_session(conn, token_hash, services.clock.now())
    if member_id is None:
        raise Unauthorized("Unknown or expired member token.")
    request.scope["state"]["caller_log"] = {"member_id": member_id}
    return MemberCaller(member_id)


async def member_or_partner_caller(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Caller:
    """Endpoints open to both: a bearer token means a member, otherwise a signed partner."""
    if any(name.lower() == b"authorization" for name, _ in request.scope["headers"]):
        return Caller(member_id=(await member_caller(request, services)).member_id)
    partner = await partner_caller(request, services)
    return Caller(partner_id=partner.partner_id, nonce=partner.nonce)
