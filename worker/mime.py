"""Pure MIME building with the stdlib ``email`` package: an OutgoingMessage to wire bytes."""

from __future__ import annotations

import email.policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import formatdate

from worker.message import OutgoingMessage


class _CachingHeaderRegistry(HeaderRegistry):
    """The stdlib registry builds a new header class on every lookup; build each one once.

    That class creation was the largest single cost of building a message (about 40 %).
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        header_class = self._classes.get(key)
        if header_class is None:
            header_class = self._classes[key] = super().__getitem__(name)
        return header_class


# Lines end in CRLF as SMTP requires; long headers are folded by the policy.
_POLICY = email.policy.SMTP.clone(header_factory=_CachingHeaderRegistry())


def _addresses(addresses: tuple[str, ...]) -> list[Address]:
    # Address objects (of addresses validated at enqueue) skip re-parsing a joined string.
    return [Address(addr_spec=address) for address in addresses]


def build_mime(message: OutgoingMessage, sender: str, date: float) -> bytes:
    """The RFC 5322 message; Bcc recipients stay out of the headers (envelope only)."""
    mime = EmailMessage(policy=_POLICY)
    mime["From"] = Address(addr_spec=sender)
    if message.to:
        mime["To"] = _addresses(message.to)
    if message.cc:
        mime["Cc"] = _addresses(message.cc)
    if message.reply_to:
        mime["Reply-To"] = _addresses(message.reply_to)
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
