"""Delivery records: their statuses, attempts and per-recipient outcomes, and their Redis form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from worker.message import OutgoingMessage, message_document, message_from_fields

KEY_PREFIX = "outbox:"
STATUS_INDEX_PREFIX = f"{KEY_PREFIX}status:"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.PARTIALLY_SENT, DeliveryStatus.FAILED}
)


class RecipientState(StrEnum):
    PENDING = "pending"  # not tried yet
    DEFERRED = "deferred"  # refused for now (4xx); tried again with the next attempt
    SENT = "sent"
    FAILED = "failed"

    @property
    def needs_sending(self) -> bool:
        return self in (RecipientState.PENDING, RecipientState.DEFERRED)


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    address: str
    status: RecipientState
    code: int | None = None
    reply: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at sending, as recorded: when, how long, and what the server said."""

    number: int
    started_at: float
    duration_ms: float
    outcome: str  # sent | partially_sent | transient | permanent | configuration
    code: int | None = None
    reply: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    status: DeliveryStatus
    message: OutgoingMessage
    created_at: float
    updated_at: float
    attempt_count: int
    recipients: tuple[RecipientOutcome, ...]
    last_error: str | None
    next_attempt_at: float | None
    idempotency_key: str | None
    # attempt_count when an operator last retried it: the retry budget counts from there.
    retry_base: int = 0
    attempts: tuple[Attempt, ...] = ()

    @property
    def attempts_this_round(self) -> int:
        return self.attempt_count - self.retry_base


def record_key(delivery_id: str) -> str:
    # Short on purpose: the key is stored once per queued message (16 bytes fewer here keep
    # a record's key in a smaller allocation class).
    return f"{KEY_PREFIX}msg:{delivery_id}"


def attempts_key(delivery_id: str) -> str:
    return f"{KEY_PREFIX}msg:{delivery_id}:attempts"


def status_index_key(status: DeliveryStatus) -> str:
    return f"{STATUS_INDEX_PREFIX}{status.value}"


def idempotency_key(key: str) -> str:
    return f"{KEY_PREFIX}idempotency:{key}"


def encode_recipients(recipients: tuple[RecipientOutcome, ...]) -> str:
    return json.dumps([asdict(r) for r in recipients], separators=(",", ":"))


def encode_attempt(attempt: Attempt) -> str:
    return json.dumps(asdict(attempt), separators=(",", ":"))


def decode_record(
    delivery_id: str, fields: dict[bytes, bytes], attempts: list[bytes] | None = None
) -> DeliveryRecord:
    """A record from its hash fields (and, when read, its attempts list)."""

    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return value.decode() if value is not None and value != b"" else None

    document = message_document(fields)
    message = message_from_fields(fields, document)
    created_at = float(document["created_at"])
    stored_recipients = text("recipients")
    recipients = (
        tuple(
            RecipientOutcome(r["address"], RecipientState(r["status"]), r["code"], r["reply"])
            for r in json.loads(stored_recipients)
        )
        if stored_recipients
        else tuple(RecipientOutcome(a, RecipientState.PENDING) for a in message.recipients)
    )
    return DeliveryRecord(
        id=delivery_id,
        status=DeliveryStatus(text("status") or DeliveryStatus.QUEUED.value),
        message=message,
        created_at=created_at,
        updated_at=float(text("updated_at") or created_at),
        attempt_count=int(text("attempt_count") or 0),
        recipients=recipients,
        last_error=text("last_error"),
        next_attempt_at=float(value) if (value := text("next_attempt_at")) else None,
        idempotency_key=text("idempotency_key"),
        retry_base=int(text("retry_base") or 0),
        attempts=tuple(Attempt(**json.loads(a)) for a in attempts or ()),
    )


def record_summary(record: DeliveryRecord) -> dict[str, Any]:
    """The record as operators read it (``outbox status --json``); no secrets exist in it."""
    return {
        "id": record.id,
        "status": record.status.value,
        "subject": record.message.subject,
        "message_id": record.message.message_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "attempt_count": record.attempt_count,
        "next_attempt_at": record.next_attempt_at,
        "last_error": record.last_error,
        "idempotency_key": record.idempotency_key,
        "recipients": [asdict(r) for r in record.recipients],
        "attempts": [asdict(a) for a in record.attempts],
    }
