"""The events an endpoint may subscribe to, and the JSON body of one event."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum

from config.errors import InvalidInputError
from worker.records import DeliveryRecord

__all__ = ["EVENT_TYPES", "EventType", "event_body", "parse_events", "wants"]


class EventType(StrEnum):
    """A final status of a delivery, as an event's ``type``."""

    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CAPTURED = "captured"  # the staging ``capture`` mode's "sent"


EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)


def parse_events(values: Iterable[str] | str | None) -> tuple[EventType, ...]:
    """Event types as a caller names them (a list, or comma-separated); None is all of them.
    Each once, in the order of ``EVENT_TYPES``."""
    if values is None:
        return EVENT_TYPES
    names = values.split(",") if isinstance(values, str) else list(values)
    chosen: set[EventType] = set()
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        try:
            chosen.add(EventType(name))
        except ValueError:
            known = ", ".join(EVENT_TYPES)
            raise InvalidInputError(f"unknown event {raw!r}; use {known}", field="events") from None
    if not chosen:
        raise InvalidInputError("name at least one event, or leave it out for all", field="events")
    return tuple(event for event in EVENT_TYPES if event in chosen)


def wants(events: Iterable[EventType], status: str) -> bool:
    """Whether an endpoint subscribed to ``events`` receives the event of ``status``. One
    that wants ``sent`` also receives ``captured``, so that staging behaves as production."""
    subscribed = set(events)
    if status == EventType.CAPTURED and EventType.SENT in subscribed:
        return True
    return status in subscribed


def rfc3339(seconds: float) -> str:
    """A unix time as RFC 3339 in UTC, to the millisecond: ``2026-12-03T21:40:05.123Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(record: DeliveryRecord, status: str, attempts: int, final_at: float) -> bytes:
    """The JSON body of the event that ``record`` became ``status`` after ``attempts`` at
    ``final_at`` (unix time): compact, as it is signed byte for byte."""
    document = {
        "type": status,
        "delivery_id": record.id,
        "status": status,
        "recipients": [
            {**asdict(recipient), "status": recipient.status.value}
            for recipient in record.recipients
        ],
        "attempts": attempts,
        "idempotency_key": record.idempotency_key,
        "timestamp": rfc3339(final_at),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
