"""The Redis key of every record, attempts list, status index and idempotency key."""

from __future__ import annotations

from worker.records.model import DeliveryStatus

__all__ = [
    "ATTEMPT_COUNTERS",
    "DUE_KEY",
    "IDEMPOTENCY_PREFIX",
    "KEY_PREFIX",
    "PAUSE_KEY",
    "STATUS_INDEX_PREFIX",
    "attempts_key",
    "idempotency_key",
    "record_key",
    "status_index_key",
]

KEY_PREFIX = "outbox:"
STATUS_INDEX_PREFIX = f"{KEY_PREFIX}status:"
IDEMPOTENCY_PREFIX = f"{KEY_PREFIX}idempotency:"
# When the sweeper should look at each delivery that is not final (a zset id -> unix time):
# a queued one's check, a retry's due time, a claim's lease end.
DUE_KEY = f"{KEY_PREFIX}due"
# The sending account's pause for every worker (``worker.sending_limits``): a hash.
PAUSE_KEY = f"{KEY_PREFIX}pause"
# Attempts recorded so far, by outcome (for /metrics): a hash outcome -> count.
ATTEMPT_COUNTERS = f"{KEY_PREFIX}attempts-by-outcome"


def record_key(delivery_id: str) -> str:
    # Short on purpose: the key is stored once per queued message (16 bytes fewer here keep
    # a record's key in a smaller allocation class).
    return f"{KEY_PREFIX}msg:{delivery_id}"


def attempts_key(delivery_id: str) -> str:
    return f"{KEY_PREFIX}msg:{delivery_id}:attempts"


def status_index_key(status: DeliveryStatus) -> str:
    return f"{STATUS_INDEX_PREFIX}{status.value}"


def idempotency_key(key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{key}"
