"""Batches over HTTP (contract §9): thin controllers over `BatchService`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from exchange.batches.parse import BatchUpload
from exchange.batches.schemas import BatchAccepted, BatchResultPage, BatchStatus
from exchange.batches.service import BatchService
from exchange.errors import BatchMalformed, BatchNotFound, UnsupportedMediaType
from exchange.openapi import api
from partners.auth import PartnerCaller, partner_caller

__all__ = ["BATCH_BODY_MAX_BYTES", "BatchController"]

BATCH_BODY_MAX_BYTES = 4 * 1024 * 1024  # 10,000 items fit; the rest of the API keeps 64 KiB
_MEDIA_TYPES = {"application/json", "text/csv"}
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
After = Annotated[int, QueryParameter(ge=0)]


def _batch_id(text: str) -> str:
    if not (text.startswith("bat_") and len(text) == 28 and text[4:].isalnum()):
        raise BatchNotFound(f"No batch {text[:64]}.")
    return text


class BatchController(Controller):
    path = "/v1/batches"
    tags = ["partner"]
    dependencies = {"partner": Provide(partner_caller)}

    @post(
        "/",
        status_code=202,
        summary="Submit a batch file (JSON or CSV)",
        request_max_body_size=BATCH_BODY_MAX_BYTES,
        opt=api(body=BatchUpload, responses={202: BatchAccepted}, errors=(BatchMalformed,)),
    )
    async def submit(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        batches: NamedDependency[BatchService],
    ) -> Response[Any]:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in _MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type is {media_type or 'missing'}; send application/json or text/csv."
            )
        outcome = await batches.accept(
            partner.partner_id, partner.body, media_type, partner.proof, partner.idempotency
        )
        headers = {"Idempotency-Replayed": "true"} if outcome.replayed else None
        return Response(
            content=outcome.body,
            status_code=outcome.status_code,
            media_type="application/json",
            headers=headers,
        )

    @get(
        "/{batch_id:str}",
        summary="A batch's progress",
        opt=api(responses={200: BatchStatus}, errors=(BatchNotFound,)),
    )
    async def status(
        self,
        partner: NamedDependency[PartnerCaller],
        batches: NamedDependency[BatchService],
        batch_id: FromPath[str],
    ) -> BatchStatus:
        return await batches.status(partner.partner_id, _batch_id(batch_id))

    @get(
        "/{batch_id:str}/results",
        summary="Per-item results, in file order",
        opt=api(responses={200: BatchResultPage}, errors=(BatchNotFound,)),
    )
    async def results(
        self,
        partner: NamedDependency[PartnerCaller],
        batches: NamedDependency[BatchService],
        batch_id: FromPath[str],
        after: After = 0,
        limit: Limit = 100,
    ) -> BatchResultPage:
        return await batches.results(partner.partner_id, _batch_id(batch_id), after, limit)
