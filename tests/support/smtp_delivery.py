"""Helpers of the SMTP delivery tests: settings pointing at a peer, a message, its parsed form."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from config.mail_settings import SmtpSettings, TlsMode
from peers.smtp_peer import SmtpPeer
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer

__all__ = ["body_text", "configure", "enqueue", "parse"]


def configure(outbox_context: OutboxContext, peer: SmtpPeer, **overrides: object) -> None:
    fields: dict[str, object] = {
        "server": peer.host,
        "port": peer.port,
        "from_mailbox": "robot@example.com",
        "tls": TlsMode.NONE,
        **overrides,
    }
    outbox_context.settings_store.save(SmtpSettings.model_validate(fields))


def enqueue(producer: Producer, **fields: object) -> str:
    message = MessageInput.model_validate(
        {"to": ["alice@example.com"], "subject": "Run results", "text": "All green.", **fields}
    )
    return producer.enqueue(message).id


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body_text(message: EmailMessage, subtype: str) -> str:
    """The text of ``message``'s ``subtype`` body (``"plain"``, ``"html"``), which it has."""
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} body"
    content = part.get_content()
    assert isinstance(content, str)
    return content
