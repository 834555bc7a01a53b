"""Pure building of Microsoft Graph message JSON from an OutgoingMessage."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.errors import PermanentError
from worker.message import Attachment, OutgoingMessage

__all__ = [
    "INLINE_ATTACHMENT_LIMIT",
    "MAX_ATTACHMENT_BYTES",
    "GraphMessage",
    "build_graph_message",
    "file_attachment",
]

# Graph takes attachments under 3 MB inline in the message; larger ones (up to 150 MB) must
# go through an upload session on a draft.
INLINE_ATTACHMENT_LIMIT = 3 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GraphMessage:
    """The message JSON, and the attachments too large to travel inside it."""

    json: dict[str, Any]
    large_attachments: tuple[Attachment, ...]


def _recipients(addresses: Sequence[str], pending: set[str]) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": a}} for a in addresses if a in pending]


def file_attachment(attachment: Attachment) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": attachment.name,
        "contentType": attachment.content_type,
        "contentBytes": base64.b64encode(attachment.content).decode("ascii"),
    }


def build_graph_message(message: OutgoingMessage, recipients: Sequence[str]) -> GraphMessage:
    """The ``message`` object of sendMail (or of a draft), addressed to ``recipients`` only."""
    pending = set(recipients)
    for name, _ in message.headers:
        # Graph refuses any custom header that does not start with "X-".
        if not name.lower().startswith("x-"):
            raise PermanentError(
                f"Microsoft Graph accepts only X- custom headers; {name!r} cannot be sent"
            )
    for attachment in message.attachments:
        if len(attachment.content) > MAX_ATTACHMENT_BYTES:
            raise PermanentError(f"attachment {attachment.name!r} is over Graph's 150 MB limit")
    # Graph holds one body: HTML when given (mail clients prefer it), else the text.
    if message.html is not None:
        body = {"contentType": "HTML", "content": message.html}
    else:
        body = {"contentType": "Text", "content": message.text or ""}
    json: dict[str, Any] = {
        "subject": message.subject,
        "body": body,
        "toRecipients": _recipients(message.to, pending),
        "ccRecipients": _recipients(message.cc, pending),
        "bccRecipients": _recipients(message.bcc, pending),
        # Fixed at enqueue, like the SMTP Message-ID, so a duplicate can be recognized.
        "internetMessageId": message.message_id,
    }
    if message.reply_to:
        json["replyTo"] = [{"emailAddress": {"address": a}} for a in message.reply_to]
    if message.headers:
        json["internetMessageHeaders"] = [
            {"name": name, "value": value} for name, value in message.headers
        ]
    inline = [a for a in message.attachments if len(a.content) < INLINE_ATTACHMENT_LIMIT]
    if inline:
        json["attachments"] = [file_attachment(a) for a in inline]
    large = tuple(a for a in message.attachments if len(a.content) >= INLINE_ATTACHMENT_LIMIT)
    return GraphMessage(json, large)
