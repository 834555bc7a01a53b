"""Pure MIME building with the stdlib ``email`` package: an OutgoingMessage to wire bytes."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import TYPE_CHECKING, TypeAlias

from config.header_text import single_line
from worker.message import OutgoingMessage

__all__ = ["build_mime", "build_mime_with_stdlib"]


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


# Lines end in CRLF as SMTP requires; long headers are folded by the policy. With SMTPUTF8
# negotiated, headers carry UTF-8 as it is instead of RFC 2047 encoded words.
if TYPE_CHECKING:
    _Policy: TypeAlias = EmailPolicy[EmailMessage]  # generic in typeshed only
else:
    _Policy = EmailPolicy
_HEADER_CLASSES = _CachingHeaderRegistry()
_POLICY = email.policy.SMTP.clone(header_factory=_HEADER_CLASSES)
_UTF8_POLICY = email.policy.SMTPUTF8.clone(header_factory=_HEADER_CLASSES)


# A header this short and plain folds to itself: the policy's parse-and-fold round trip would
# produce the same bytes, at twice the cost of the whole message.
_FOLD_FREE_LENGTH = 76


def _set_header(mime: EmailMessage, name: str, value: str) -> None:
    # Checked at enqueue already; checked again here because this is where it reaches the wire.
    try:
        single_line(value)
    except ValueError as exc:
        raise ValueError(f"header {name} {exc}") from None
    if value.isascii() and len(name) + 2 + len(value) <= _FOLD_FREE_LENGTH:
        mime.set_raw(name, value)
    else:
        mime[name] = value


def _set_addresses(mime: EmailMessage, name: str, addresses: tuple[str, ...]) -> None:
    joined = ", ".join(addresses)
    if joined.isascii() and len(name) + 2 + len(joined) <= _FOLD_FREE_LENGTH:
        _set_header(mime, name, joined)
    else:
        # Address objects (validated at enqueue) skip re-parsing, and fold and encode right.
        mime[name] = [_address(address) for address in addresses]


def _address(address: str) -> Address:
    if address.isascii():
        return Address(addr_spec=address)
    # The stdlib refuses a non-ASCII local part in an addr-spec string, not in its parts.
    local, _, domain = address.rpartition("@")
    if local.startswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return Address(username=local, domain=domain)


def build_mime(message: OutgoingMessage, sender: str, date: float, *, utf8: bool = False) -> bytes:
    """The RFC 5322 message; Bcc recipients stay out of the headers (envelope only).

    ``utf8`` is for a session that negotiated SMTPUTF8: non-ASCII headers go as UTF-8.
    """
    policy = _UTF8_POLICY if utf8 else _POLICY
    mime = _with_headers(message, sender, date, policy)
    plain = _plain_body(message, policy)
    if plain is None:
        return _flatten_with_stdlib(mime, message, policy)
    return _flatten_plain(mime, policy, plain)


def build_mime_with_stdlib(
    message: OutgoingMessage, sender: str, date: float, *, utf8: bool = False
) -> bytes:
    """``build_mime`` with every body built by the stdlib's content manager and generator:
    the reference its shortcut for plain bodies is held byte-identical to."""
    policy = _UTF8_POLICY if utf8 else _POLICY
    return _flatten_with_stdlib(_with_headers(message, sender, date, policy), message, policy)


def _with_headers(
    message: OutgoingMessage, sender: str, date: float, policy: _Policy
) -> EmailMessage:
    mime = EmailMessage(policy=policy)
    _set_addresses(mime, "From", (sender,))
    if message.to:
        _set_addresses(mime, "To", message.to)
    if message.cc:
        _set_addresses(mime, "Cc", message.cc)
    if message.reply_to:
        _set_addresses(mime, "Reply-To", message.reply_to)
    _set_header(mime, "Subject", message.subject)
    _set_header(mime, "Date", format_datetime(datetime.fromtimestamp(date, UTC)))
    # Fixed at enqueue, so every attempt carries the same id and receivers can drop duplicates.
    _set_header(mime, "Message-ID", message.message_id)
    for name, value in message.headers:
        _set_header(mime, name, value)
    return mime


def _flatten_with_stdlib(mime: EmailMessage, message: OutgoingMessage, policy: _Policy) -> bytes:
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
    return mime.as_bytes(policy=policy)


@dataclass(frozen=True, slots=True)
class _PlainBody:
    """A single text part that needs no transfer encoding, split into its lines."""

    subtype: str
    transfer_encoding: str
    lines: list[bytes]


def _plain_body(message: OutgoingMessage, policy: _Policy) -> _PlainBody | None:
    """The body when the message is one text part whose lines all fit (the common case); None
    for anything else (alternatives, attachments, long lines), which the stdlib builds.

    The stdlib would pick 7bit (ASCII) or 8bit for such a body and send it as it is; its
    content manager re-parses the Content-Type it has just written, and its generator writes
    the body a line at a time, which together cost most of a message's build.
    """
    part = _single_text_part(message)
    if part is None:
        return None
    subtype, text = part
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate: the stdlib's error is the one to raise
    lines = encoded.splitlines()
    limit = policy.max_line_length
    if limit is not None and max(map(len, lines), default=0) > limit:
        return None
    if encoded.isascii():
        return _PlainBody(subtype, "7bit", lines)
    if policy.cte_type != "8bit":
        return None  # the stdlib would pick quoted-printable or base64
    return _PlainBody(subtype, "8bit", lines)


def _single_text_part(message: OutgoingMessage) -> tuple[str, str] | None:
    """The subtype ("plain" or "html") and text of a message that is one text part; None when
    it has attachments, both bodies (an alternative) or neither (the stdlib's empty body)."""
    if message.attachments:
        return None
    match message.text, message.html:
        case str() as text, None:
            return "plain", text
        case None, str() as text:
            return "html", text
        case _:
            return None


def _flatten_plain(mime: EmailMessage, policy: _Policy, body: _PlainBody) -> bytes:
    """What ``set_content`` and ``as_bytes`` would produce for ``body``, byte for byte (a
    property test holds the two paths equal): the headers folded by the policy, then the
    lines, each ending in CRLF."""
    mime.set_raw("Content-Type", f'text/{body.subtype}; charset="utf-8"')
    mime.set_raw("Content-Transfer-Encoding", body.transfer_encoding)
    mime.set_raw("MIME-Version", "1.0")
    linesep = policy.linesep.encode("ascii")
    headers = b"".join(policy.fold_binary(name, value) for name, value in mime.raw_items())
    return headers + linesep + b"".join(line + linesep for line in body.lines or [b""])
