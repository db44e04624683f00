"""The adjustments API (contract §8): thin controllers over `AdjustmentService`.

POST /v1/adjustments                      finance, admin   Idempotency-Key; 201 pending
GET  /v1/adjustments/{adjustment_id}      finance, admin   the adjustment and its audit trail
POST /v1/adjustments/{adjustment_id}/approval
                                          finance, admin   another token than the requester's
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from exchange import schemas
from exchange.errors import (
    AdjustmentNotFound,
    AdjustmentNotPending,
    FourEyesRequired,
    InsufficientPoints,
    MemberNotFound,
    PartnerNotFound,
    PartnerTerminated,
)
from exchange.http import decode_body, respond
from exchange.openapi import api
from exchange.operators import OperatorIdentity
from exchange.operators.auth import staff_caller
from exchange.service import AdjustmentService, Approver, adjustment_view
from partners.auth import operator_idempotency

__all__ = ["AdjustmentController"]


def _approver(identity: OperatorIdentity) -> Approver:
    return Approver(token_id=identity.token_id, name=identity.name)


class AdjustmentController(Controller):
    path = "/v1/adjustments"
    tags = ["finance"]
    dependencies = {"staff": Provide(staff_caller)}

    @post(
        "/",
        status_code=201,
        summary="Request an adjustment (a second operator approves)",
        opt=api(
            body=schemas.AdjustmentCreate,
            responses={201: schemas.Adjustment},
            errors=(MemberNotFound, PartnerNotFound),
            idempotent=True,
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        adjustments: NamedDependency[AdjustmentService],
    ) -> Response[Any]:
        body = await request.body()
        idempotency = operator_idempotency(request, body)
        data = decode_body(request, body, schemas.AdjustmentCreate)
        return respond(await adjustments.request(_approver(staff), data, idempotency))

    @get(
        "/{adjustment_id:str}",
        summary="An adjustment with who requested and approved it",
        opt=api(responses={200: schemas.Adjustment}, errors=(AdjustmentNotFound,)),
    )
    async def get_one(
        self,
        staff: NamedDependency[OperatorIdentity],
        adjustments: NamedDependency[AdjustmentService],
        adjustment_id: FromPath[str],
    ) -> schemas.Adjustment:
        return adjustment_view(await adjustments.get(adjustment_id))

    @post(
        "/{adjustment_id:str}/approval",
        status_code=200,
        summary="Approve and post an adjustment (not by the token that requested it)",
        opt=api(
            responses={200: schemas.Adjustment},
            errors=(
                AdjustmentNotFound,
                AdjustmentNotPending,
                FourEyesRequired,
                PartnerTerminated,
                InsufficientPoints,
            ),
        ),
    )
    async def approve(
        self,
        staff: NamedDependency[OperatorIdentity],
        adjustments: NamedDependency[AdjustmentService],
        adjustment_id: FromPath[str],
    ) -> schemas.Adjustment:
        row = await adjustments.approve(_approver(staff), adjustment_id)
        return adjustment_view(row)
