"""A record's Redis hash form: the fields a new record starts with, and decoding them back."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any

from worker.message import (
    OutgoingMessage,
    message_document,
    message_from_fields,
    message_to_fields,
)
from worker.records.model import (
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    Priority,
    RecipientOutcome,
    RecipientState,
)

__all__ = [
    "PRIORITY_FIELD",
    "as_text",
    "decode_record",
    "encode_attempt",
    "encode_recipients",
    "new_record_fields",
]


# The hash field of a delivery's priority, set only when it is not normal.
PRIORITY_FIELD = "priority"


def as_text(value: object) -> str:
    """A Redis reply (bytes) or a Python value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def new_record_fields(
    message: OutgoingMessage,
    *,
    created_at: float,
    idempotency_key: str | None,
    priority: Priority = Priority.NORMAL,
    created_by: str | None = None,
    idempotency_owner: str | None = None,
    send_at: float | None = None,
) -> dict[str, str | bytes]:
    """The fields of a queued (or, with ``send_at``, scheduled) record: only what it needs.
    Counters start at their defaults and every recipient is pending until the first attempt:
    fewer fields, less memory."""
    fields: dict[str, str | bytes] = {
        **message_to_fields(message, created_at=created_at),
        "status": (DeliveryStatus.QUEUED if send_at is None else DeliveryStatus.SCHEDULED).value,
    }
    if send_at is not None:
        # next_attempt_at is what the claim compares with its clock before taking it.
        fields["send_at"] = fields["next_attempt_at"] = repr(send_at)
    if idempotency_key:
        fields["idempotency_key"] = idempotency_key
    if priority is not Priority.NORMAL:
        fields[PRIORITY_FIELD] = priority.value  # absent means normal: no bytes for most
    if created_by:
        fields["created_by"] = created_by
    if idempotency_owner and idempotency_key:
        fields["idempotency_owner"] = idempotency_owner  # whose namespace the key is in
    return fields


def encode_recipients(recipients: Iterable[RecipientOutcome]) -> str:
    return json.dumps([_fields_of(r) for r in recipients], separators=(",", ":"))


def encode_attempt(attempt: Attempt) -> str:
    return json.dumps(_fields_of(attempt), separators=(",", ":"))


_FIELD_NAMES = {kind: tuple(f.name for f in fields(kind)) for kind in (RecipientOutcome, Attempt)}


def _fields_of(value: RecipientOutcome | Attempt) -> dict[str, Any]:
    # What dataclasses.asdict gives for these flat records, without its deep copy of every
    # value: a third of the cost, paid for every attempt recorded.
    return {name: getattr(value, name) for name in _FIELD_NAMES[type(value)]}


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
    status = DeliveryStatus(text("status") or DeliveryStatus.QUEUED.value)
    if status is DeliveryStatus.CANCELLED:
        # The cancel script leaves the recipients as they were: those not reached read so.
        recipients = tuple(
            replace(r, status=RecipientState.CANCELLED) if r.status.needs_sending else r
            for r in recipients
        )
    return DeliveryRecord(
        id=delivery_id,
        status=status,
        message=message,
        created_at=created_at,
        updated_at=float(text("updated_at") or created_at),
        attempt_count=int(text("attempt_count") or 0),
        recipients=recipients,
        last_error=text("last_error"),
        next_attempt_at=float(value) if (value := text("next_attempt_at")) else None,
        idempotency_key=text("idempotency_key"),
        retry_base=int(text("retry_base") or 0),
        attempts=tuple(_decode_attempt(a) for a in attempts or ()),
        priority=Priority(text(PRIORITY_FIELD) or Priority.NORMAL.value),
        waiting_for=text("waiting_for"),
        created_by=text("created_by"),
        send_at=float(value) if (value := text("send_at")) else None,
        redirected_to=tuple(json.loads(value)) if (value := text("redirected_to")) else (),
    )


def _decode_attempt(raw: bytes) -> Attempt:
    document = json.loads(raw)
    return Attempt(**{**document, "outcome": AttemptOutcome(document["outcome"])})
