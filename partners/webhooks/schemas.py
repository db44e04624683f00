"""Wire structs of the webhook endpoints (contract §10): the subscription a partner puts,
and every response, so the OpenAPI document describes each field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec

from partners.webhooks.events import EVENT_TYPES

__all__ = [
    "DeliveryRetry",
    "DeliveryStatus",
    "ExchangeKey",
    "ExchangeKeys",
    "Webhook",
    "WebhookDeliveries",
    "WebhookDelivery",
    "WebhookSubscription",
]

DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]
EventType = Literal["batch.completed", "statement.ready", "member.points_expiring", "key.revoked"]
# A new event type must be named here too, or the OpenAPI document would not list it.
if set(get_args(EventType)) != set(EVENT_TYPES):  # pragma: no cover - caught at import
    raise RuntimeError(f"EventType and EVENT_TYPES disagree: {set(get_args(EventType))}")


class WebhookSubscription(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`PUT /v1/webhook`: where to POST events and which (names checked by the service)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    events: Annotated[list[str], msgspec.Meta(min_length=1, max_length=10)]


class Webhook(msgspec.Struct, frozen=True):
    """The partner's subscription as stored."""

    url: str
    events: list[EventType]
    updated_at: datetime


class WebhookDelivery(msgspec.Struct, frozen=True):
    """One event's delivery state; `next_attempt_at` only while it is pending."""

    event_id: str
    type: EventType
    created_at: datetime
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    next_attempt_at: datetime | msgspec.UnsetType = msgspec.UNSET


class WebhookDeliveries(msgspec.Struct, frozen=True):
    """A page, oldest event first; `next` (the `after=` of the next page) when it is full."""

    deliveries: list[WebhookDelivery]
    next: str | msgspec.UnsetType = msgspec.UNSET


class DeliveryRetry(msgspec.Struct, frozen=True):
    """The event is pending again and will be sent at once."""

    event_id: str
    status: Literal["pending"]


class ExchangeKey(msgspec.Struct, frozen=True):
    """An Ed25519 public key (base64url, 32 bytes) the exchange signs deliveries with."""

    key_id: str
    public_key: str
    status: Literal["active", "retired"]


class ExchangeKeys(msgspec.Struct, frozen=True):
    keys: list[ExchangeKey]
