"""The MIME message a ``captured`` delivery keeps on its record, read apart from the record."""

from __future__ import annotations

import redis

from worker.records.keys import record_key

__all__ = ["CAPTURED_MESSAGE_FIELD", "REDIRECTED_TO_FIELD", "captured_message"]

# Hash fields of a record, written by the attempt that captured (or redirected) it.
CAPTURED_MESSAGE_FIELD = "captured_message"
REDIRECTED_TO_FIELD = "redirected_to"


def captured_message(client: redis.Redis, delivery_id: str) -> bytes | None:
    """The captured MIME message of a delivery, or None when it has none. One field only:
    the message may be large, and the record's other reads never need it."""
    value: bytes | None = client.hget(record_key(delivery_id), CAPTURED_MESSAGE_FIELD)  # type: ignore[assignment]
    return value or None
