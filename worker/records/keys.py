"""The Redis key of every record, attempts list, status index and idempotency key.

The names come from the registry (``config.redis_keys``); these builders are the hot path's
f-strings of its prefixes.
"""

from __future__ import annotations

from config import redis_keys as registry
from config.redis_keys import KEY_PREFIX
from worker.records.model import DeliveryStatus

__all__ = [
    "ATTEMPT_COUNTERS",
    "DUE_KEY",
    "IDEMPOTENCY_PREFIX",
    "KEY_DELIVERIES_PREFIX",
    "KEY_PREFIX",
    "OWNED_IDEMPOTENCY_PREFIX",
    "PAUSE_KEY",
    "STATUS_INDEX_PREFIX",
    "WEBHOOKS_KEY",
    "WEBHOOK_EVENTS_KEY",
    "attempts_key",
    "idempotency_key",
    "key_deliveries_key",
    "record_key",
    "status_index_key",
]

STATUS_INDEX_PREFIX = registry.STATUS_INDEX.prefix
IDEMPOTENCY_PREFIX = registry.IDEMPOTENCY.prefix
# An API key's idempotency keys are its own (two producers never share a delivery by
# choosing the same key): "{prefix}{key name}:{idempotency key}". Key names hold no ':'.
OWNED_IDEMPOTENCY_PREFIX = registry.KEY_IDEMPOTENCY.prefix
# The deliveries each API key created, a zset id -> created at: what a producer may list.
KEY_DELIVERIES_PREFIX = registry.KEY_DELIVERIES.prefix
# When the sweeper should look at each delivery that is not final (a zset id -> unix time):
# a queued one's check, a retry's due time, a claim's lease end.
DUE_KEY = registry.DUE.pattern
# The sending account's pause for every worker (``worker.sending_limits``): a hash.
PAUSE_KEY = registry.PAUSE.pattern
# Attempts recorded so far, by outcome (for /metrics): a hash outcome -> count.
ATTEMPT_COUNTERS = registry.ATTEMPT_COUNTERS.pattern
# The registered webhook endpoints (``worker.webhooks``): a hash endpoint id -> JSON.
WEBHOOKS_KEY = registry.WEBHOOKS.pattern
# Deliveries that reached a final status while an endpoint was registered, for the webhook
# dispatcher to announce: a zset "{id}:{status}:{attempt count}" -> when. Written by the
# same script that makes the status final, so no outcome goes unannounced.
WEBHOOK_EVENTS_KEY = registry.WEBHOOK_EVENTS.pattern


_RECORD_PREFIX = registry.RECORD.prefix


def record_key(delivery_id: str) -> str:
    # Short on purpose: the key is stored once per queued message (16 bytes fewer here keep
    # a record's key in a smaller allocation class).
    return f"{_RECORD_PREFIX}{delivery_id}"


def attempts_key(delivery_id: str) -> str:
    return registry.ATTEMPTS.name(id=delivery_id)


def status_index_key(status: DeliveryStatus) -> str:
    return f"{STATUS_INDEX_PREFIX}{status.value}"


def idempotency_key(key: str, owner: str | None = None) -> str:
    """Where an idempotency key points to its delivery: per API key when one sent it."""
    if owner is None:
        return f"{IDEMPOTENCY_PREFIX}{key}"
    return f"{OWNED_IDEMPOTENCY_PREFIX}{owner}:{key}"


def key_deliveries_key(owner: str) -> str:
    return f"{KEY_DELIVERIES_PREFIX}{owner}"
