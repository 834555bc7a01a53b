"""Graph message JSON: recipients, body, headers, attachments inline or by upload session."""

from __future__ import annotations

import base64

import pytest

from config.errors import PermanentError
from worker.message import Attachment, OutgoingMessage
from worker.transports.graph.message import INLINE_ATTACHMENT_LIMIT, build_graph_message

MESSAGE = OutgoingMessage(
    message_id="<id-1@outbox.test>",
    to=("a@example.com", "b@example.com"),
    cc=("c@example.com",),
    bcc=("d@example.com",),
    subject="Results",
    text="plain",
    html="<p>html</p>",
    reply_to=("r@example.com",),
    headers=(("X-Run", "7"),),
    attachments=(
        Attachment("small.txt", "text/plain", b"hello"),
        Attachment("big.bin", "application/octet-stream", b"\0" * INLINE_ATTACHMENT_LIMIT),
    ),
)


def test_message_json() -> None:
    built = build_graph_message(MESSAGE, MESSAGE.recipients)
    assert built.json == {
        "subject": "Results",
        "body": {"contentType": "HTML", "content": "<p>html</p>"},
        "toRecipients": [
            {"emailAddress": {"address": "a@example.com"}},
            {"emailAddress": {"address": "b@example.com"}},
        ],
        "ccRecipients": [{"emailAddress": {"address": "c@example.com"}}],
        "bccRecipients": [{"emailAddress": {"address": "d@example.com"}}],
        "internetMessageId": "<id-1@outbox.test>",
        "replyTo": [{"emailAddress": {"address": "r@example.com"}}],
        "internetMessageHeaders": [{"name": "X-Run", "value": "7"}],
        "attachments": [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "small.txt",
                "contentType": "text/plain",
                "contentBytes": base64.b64encode(b"hello").decode(),
            }
        ],
    }
    assert [a.name for a in built.large_attachments] == ["big.bin"]


def test_only_the_pending_recipients_are_addressed() -> None:
    built = build_graph_message(MESSAGE, ["b@example.com"])
    assert built.json["toRecipients"] == [{"emailAddress": {"address": "b@example.com"}}]
    assert built.json["ccRecipients"] == built.json["bccRecipients"] == []


def test_text_only_body() -> None:
    message = OutgoingMessage(message_id="<m@x>", to=("a@example.com",), subject="s", text="t")
    assert build_graph_message(message, message.recipients).json["body"] == {
        "contentType": "Text",
        "content": "t",
    }


def test_non_x_headers_cannot_go_through_graph() -> None:
    message = OutgoingMessage(
        message_id="<m@x>", to=("a@example.com",), subject="s", headers=(("Auto-Submitted", "yes"),)
    )
    with pytest.raises(PermanentError, match="Auto-Submitted"):
        build_graph_message(message, message.recipients)
