"""Delivery webhooks: endpoints that administrators register, the signed events the workers
send them when a delivery's status becomes final, and every attempt at sending one.

The scripts that make a status final mark the outcome in ``outbox:webhook-events`` while
an endpoint is registered (``worker.records.scripts``). Each worker process runs a
``WebhookDispatcher`` on its event loop: it fans each event out into one webhook delivery
per subscribed endpoint (stored before the event is dropped), takes due deliveries under a
lease measured by Redis' clock, and sends them with its own HTTP client and its own bound on
requests in flight, so a slow or dead endpoint never holds up an e-mail.

Its keys are the ``WEBHOOK*`` entries of the registry (``config.redis_keys``).
"""

from worker.webhooks.deliveries import WebhookDeliveries, WebhookDelivery, WebhookStatus
from worker.webhooks.dispatcher import WebhookDispatcher, webhook_client
from worker.webhooks.endpoints import Endpoint, EndpointStore, decode_endpoints
from worker.webhooks.events import EVENT_TYPES, EventType, parse_events
from worker.webhooks.schedule import MAX_ATTEMPTS, RETRY_DELAYS, delay_after
from worker.webhooks.signing import message_id, new_secret, sign, signed_headers
from worker.webhooks.urls import check_url

__all__ = [
    "EVENT_TYPES",
    "MAX_ATTEMPTS",
    "RETRY_DELAYS",
    "Endpoint",
    "EndpointStore",
    "EventType",
    "WebhookDeliveries",
    "WebhookDelivery",
    "WebhookDispatcher",
    "WebhookStatus",
    "check_url",
    "decode_endpoints",
    "delay_after",
    "message_id",
    "new_secret",
    "parse_events",
    "sign",
    "signed_headers",
    "webhook_client",
]
