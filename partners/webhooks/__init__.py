"""Webhooks (contract §10): events to partners from the outbox, signed by the exchange.

events.py   the event types and where each is emitted (in its fact's transaction)
store.py    all SQL (subscriptions, deliveries, the exchange's keys)
service.py  WebhookService: subscriptions, the delivery worker, key rotation
http.py     the controllers (registered in exchange.app)
"""

from partners.webhooks.events import EVENT_TYPES

__all__ = ["EVENT_TYPES"]
