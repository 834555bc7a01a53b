"""Pure MIME building with the stdlib ``email`` package: an OutgoingMessage to wire bytes."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.utils import formatdate

from worker.message import OutgoingMessage

# Lines end in CRLF as SMTP requires; long headers are folded by the policy.
_POLICY = email.policy.SMTP


def build_mime(message: OutgoingMessage, sender: str, date: float) -> bytes:
    """The RFC 5322 message; Bcc recipients stay out of the headers (envelope only)."""
    mime = EmailMessage(policy=_POLICY)
    mime["From"] = sender
    if message.to:
        mime["To"] = ", ".join(message.to)
    if message.cc:
        mime["Cc"] = ", ".join(message.cc)
    if message.reply_to:
        mime["Reply-To"] = ", ".join(message.reply_to)
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(date, localtime=False, usegmt=True)
    # Fixed at enqueue, so every attempt carries the same id and receivers can drop duplicates.
    mime["Message-ID"] = message.message_id
    for name, value in message.headers:
        mime[name] = value

    if message.text is not None:
        mime.set_content(message.text)
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html")
    elif message.html is not None:
        mime.set_content(message.html, subtype="html")
    else:
        mime.set_content("")

    for attachment in message.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        mime.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.name
        )
    return mime.as_bytes(policy=_POLICY)
