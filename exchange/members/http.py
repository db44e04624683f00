"""The members API of contract §11: transfers and export (member token), erasure (admin).

Thin controllers: authenticate (a dependency), decode strictly, call one MembersService
method. Transfers follow §2.2 exactly like partner POSTs (Idempotency-Key required,
replay with `Idempotency-Replayed: true`, 422 on reuse, 409 while in flight), with keys
scoped to the member.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from exchange.errors import InsufficientPoints, MemberNotFound, TransferLimitExceeded
from exchange.http import decode_body, respond
from exchange.members.auth import MemberCaller, member_caller
from exchange.members.schemas import Erased, MemberExport, TransferCreate, TransferOut
from exchange.members.service import MembersService
from exchange.openapi import api
from exchange.operators import OperatorIdentity
from exchange.operators.auth import admin_caller
from exchange.service import Idempotency

# The partner gateway's own Idempotency-Key rules and request fingerprint, so that a
# member's key behaves exactly like a partner's.
from partners.auth import header_list, idempotency_key_of, request_fingerprint

__all__ = ["MemberAdminController", "MemberRightsController"]


def _own(member: MemberCaller, member_id: str) -> None:
    """A token for another member finds nothing (404, as if the member did not exist)."""
    if member.member_id != member_id:
        raise MemberNotFound(f"No member {member_id}.")


async def _idempotency(request: Request[Any, Any, Any], body: bytes) -> Idempotency:
    scope = request.scope
    key = idempotency_key_of(scope["method"], header_list(request))
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if key is None:  # pragma: no cover - only POSTs come here, and they always need a key
        raise RuntimeError("a POST without an idempotency key passed the check")
    return Idempotency(key, request_fingerprint(scope["method"], path, body))


class MemberRightsController(Controller):
    """Calls with the member's own token: transfers, and the export of its data."""

    path = "/v1/members"
    tags = ["member"]
    dependencies = {"member": Provide(member_caller)}

    @post(
        "/{member_id:str}/transfers",
        status_code=201,
        summary="Transfer points to a member",
        opt=api(
            body=TransferCreate,
            responses={201: TransferOut},
            errors=(MemberNotFound, InsufficientPoints, TransferLimitExceeded),
            idempotent=True,
        ),
    )
    async def transfer(
        self,
        request: Request[Any, Any, Any],
        member: NamedDependency[MemberCaller],
        members: NamedDependency[MembersService],
        member_id: FromPath[str],
    ) -> Response[TransferOut]:
        _own(member, member_id)
        body = await request.body()
        idempotency = await _idempotency(request, body)
        data = decode_body(request, body, TransferCreate)
        outcome = await members.transfer(member_id, data.to_member_id, data.points, idempotency)
        return respond(outcome)

    @get(
        "/{member_id:str}/export",
        summary="Everything held about the member (GDPR)",
        opt=api(responses={200: MemberExport}, errors=(MemberNotFound,)),
    )
    async def export(
        self,
        member: NamedDependency[MemberCaller],
        members: NamedDependency[MembersService],
        member_id: FromPath[str],
    ) -> MemberExport:
        _own(member, member_id)
        return await members.export(member_id)


class MemberAdminController(Controller):
    """Operator calls about members: erasure (GDPR)."""

    path = "/v1/admin/members"
    tags = ["operator"]
    dependencies = {"admin": Provide(admin_caller)}

    @delete(
        "/{member_id:str}",
        status_code=200,
        summary="Erase a member's personal data",
        opt=api(responses={200: Erased}, errors=(MemberNotFound,)),
    )
    async def erase(
        self,
        admin: NamedDependency[OperatorIdentity],
        members: NamedDependency[MembersService],
        member_id: FromPath[str],
    ) -> Erased:
        return await members.erase(member_id)
