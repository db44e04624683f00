"""Webhooks over HTTP (contract §10): the partner's subscription, its deliveries, and the
exchange's public keys. Thin controllers over `WebhookService`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from exchange.errors import (
    BadRequest,
    DeliveryNotFound,
    Unprocessable,
    UnsupportedMediaType,
    WebhookNotFound,
    WebhookUrlInvalid,
)
from exchange.openapi import api
from partners.auth import PartnerCaller, partner_caller
from partners.webhooks.schemas import (
    DeliveryRetry,
    ExchangeKeys,
    Webhook,
    WebhookDeliveries,
    WebhookSubscription,
)
from partners.webhooks.service import WebhookService

__all__ = ["ExchangeKeyController", "WebhookController"]

Limit = Annotated[int, QueryParameter(ge=1, le=200)]


def _decode(request: Request[Any, Any, Any], body: bytes) -> WebhookSubscription:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(f"Content-Type is {media_type or 'missing'}.")
    try:
        return msgspec.json.decode(body, type=WebhookSubscription)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None


class WebhookController(Controller):
    path = "/v1/webhook"
    tags = ["partner"]
    dependencies = {"partner": Provide(partner_caller)}

    @put(
        "/",
        summary="Set the partner's webhook URL and events",
        opt=api(body=WebhookSubscription, responses={200: Webhook}, errors=(WebhookUrlInvalid,)),
    )
    async def put_webhook(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        webhooks: NamedDependency[WebhookService],
    ) -> Webhook:
        data = _decode(request, partner.body)
        return await webhooks.subscribe(partner.partner_id, data.url, data.events)

    @get(
        "/",
        summary="The partner's webhook",
        opt=api(responses={200: Webhook}, errors=(WebhookNotFound,)),
    )
    async def get_webhook(
        self, partner: NamedDependency[PartnerCaller], webhooks: NamedDependency[WebhookService]
    ) -> Webhook:
        return await webhooks.subscription(partner.partner_id)

    @delete(
        "/",
        status_code=204,
        summary="Remove the partner's webhook",
        opt=api(errors=(WebhookNotFound,)),
    )
    async def delete_webhook(
        self, partner: NamedDependency[PartnerCaller], webhooks: NamedDependency[WebhookService]
    ) -> None:
        await webhooks.unsubscribe(partner.partner_id)

    @get(
        "/deliveries",
        summary="Delivery attempts of the partner's events",
        opt=api(responses={200: WebhookDeliveries}),
    )
    async def deliveries(
        self,
        partner: NamedDependency[PartnerCaller],
        webhooks: NamedDependency[WebhookService],
        status: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> WebhookDeliveries:
        return await webhooks.deliveries(partner.partner_id, status, after, limit)

    @post(
        "/deliveries/{event_id:str}/retry",
        status_code=202,
        summary="Send an event again",
        opt=api(responses={202: DeliveryRetry}, errors=(DeliveryNotFound,)),
    )
    async def retry(
        self,
        partner: NamedDependency[PartnerCaller],
        webhooks: NamedDependency[WebhookService],
        event_id: FromPath[str],
    ) -> Response[Any]:
        outcome = await webhooks.retry(partner.partner_id, event_id, partner.idempotency)
        return Response(
            content=outcome.body,
            status_code=outcome.status_code,
            media_type="application/json",
            headers={"Idempotency-Replayed": "true"} if outcome.replayed else None,
        )


class ExchangeKeyController(Controller):
    path = "/v1/exchange-keys"
    tags = ["partner"]

    @get(
        "/",
        summary="The exchange's public keys for verifying webhook deliveries",
        opt=api(responses={200: ExchangeKeys}, security=(None,)),
    )
    async def keys(self, webhooks: NamedDependency[WebhookService]) -> ExchangeKeys:
        return await webhooks.keys()
