"""The message to deliver, as an immutable value, and its storage form in a Redis hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Attachment",
    "OutgoingMessage",
    "message_document",
    "message_from_fields",
    "message_to_fields",
]


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """An e-mail as the producer asked for it; the sender comes from the settings at send time."""

    message_id: str
    to: tuple[str, ...]
    subject: str
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    text: str | None = None
    html: str | None = None
    reply_to: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = field(default=(), repr=False)

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every envelope recipient once, in order: To, then Cc, then Bcc."""
        return tuple(dict.fromkeys((*self.to, *self.cc, *self.bcc)))


_ATTACHMENT_FIELD = "att:{}"


def message_to_fields(message: OutgoingMessage, **extra: Any) -> dict[str, str | bytes]:
    """Hash fields: the envelope and headers as JSON (with ``extra`` immutable facts such as
    the creation time); bodies and attachments raw, each in a field of its own, so large
    contents are neither escaped into JSON nor base64-inflated."""
    document: dict[str, Any] = {
        **extra,
        "message_id": message.message_id,
        "to": message.to,
        "cc": message.cc,
        "bcc": message.bcc,
        "subject": message.subject,
        "reply_to": message.reply_to,
        "headers": message.headers,
        "attachments": [[a.name, a.content_type] for a in message.attachments],
    }
    # Empty lists stay out: every queued message pays for each byte kept in Redis.
    document = {name: value for name, value in document.items() if value not in ((), [])}
    fields: dict[str, str | bytes] = {"message": json.dumps(document, separators=(",", ":"))}
    if message.text is not None:
        fields["text"] = message.text.encode()
    if message.html is not None:
        fields["html"] = message.html.encode()
    for index, attachment in enumerate(message.attachments):
        fields[_ATTACHMENT_FIELD.format(index)] = attachment.content
    return fields


def message_document(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The JSON document of the message fields (the message and its ``extra`` facts)."""
    document: dict[str, Any] = json.loads(fields[b"message"])
    return document


def message_from_fields(
    fields: dict[bytes, bytes], document: dict[str, Any] | None = None
) -> OutgoingMessage:
    if document is None:
        document = message_document(fields)
    attachments = tuple(
        Attachment(name, content_type, fields[_ATTACHMENT_FIELD.format(index).encode()])
        for index, (name, content_type) in enumerate(document.get("attachments", ()))
    )
    return OutgoingMessage(
        message_id=document["message_id"],
        to=tuple(document.get("to", ())),
        cc=tuple(document.get("cc", ())),
        bcc=tuple(document.get("bcc", ())),
        subject=document["subject"],
        text=_decoded(fields.get(b"text")),
        html=_decoded(fields.get(b"html")),
        reply_to=tuple(document.get("reply_to", ())),
        headers=tuple((name, value) for name, value in document.get("headers", ())),
        attachments=attachments,
    )


def _decoded(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None
