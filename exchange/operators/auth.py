"""Who is calling, for operators: an `Authorization: Bearer <operator token>` header.

`admin_caller` and `staff_caller` are litestar dependencies: a controller declares
`admin: OperatorIdentity` or `staff: OperatorIdentity` and gets the authenticated
operator, or the request ends with 401/403/429. They receive the process's `services`
as a dependency too (provided by `exchange.app`). `bearer_token` and `issued_shape` are
shared with member tokens (`exchange.members.auth`).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from exchange.errors import Forbidden, Unauthorized
from exchange.operators._tokens import (
    OPERATOR_TOKEN_SHAPE,
    OperatorIdentity,
    authenticate_operator,
    hash_token,
)
from exchange.wiring import Services

__all__ = ["admin_caller", "bearer_token", "issued_shape", "staff_caller"]


def bearer_token(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Use 'Authorization: Bearer <token>'.")
    return token.strip()


def issued_shape(token: str, shape: re.Pattern[str], what: str) -> str:
    """Refuse a token that cannot have been issued before it costs a hash or a query."""
    if not shape.fullmatch(token):
        raise Unauthorized(f"Unknown or revoked {what} token.")
    return token


async def _operator(
    request: Request[Any, Any, Any], services: Services, roles: tuple[str, ...]
) -> OperatorIdentity:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("An operator bearer token is required.")
    issued_shape(token, OPERATOR_TOKEN_SHAPE, "operator")
    # Limited by the token itself, before the lookup: a flood costs no query.
    await services.limiter.check("operator", hash_token(token)[:16])
    identity = await authenticate_operator(services.engine, token)
    if identity is None:
        raise Unauthorized("Unknown or revoked operator token.")
    request.scope["state"]["caller_log"] = {"operator": identity.token_id, "role": identity.role}
    if identity.role not in roles:
        raise Forbidden(f"This needs the {' or '.join(roles)} role; the token is {identity.role}.")
    return identity


async def admin_caller(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> OperatorIdentity:
    return await _operator(request, services, ("admin",))


async def staff_caller(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> OperatorIdentity:
    """Admin or finance: read-only access to settlement and reports."""
    return await _operator(request, services, ("admin", "finance"))
