"""Hypothesis strategies for messages as producers send them, hostile and unusual ones included,
and the check that one arrived intact at an SMTP peer."""

from __future__ import annotations

import base64
import string
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage
from typing import Any

from hypothesis import strategies as st

from config.addresses import mailbox_address
from tests.support.smtp_delivery import body_text

__all__ = ["FIELDS", "assert_arrived_intact", "messages"]

# Every field a refusal may name (the first part of its path: ``to[1]``, ``attachments[0]``).
FIELDS = frozenset(
    {"to", "cc", "bcc", "subject", "text", "html", "reply_to", "headers", "attachments"}
)


def _mostly(usual: st.SearchStrategy[Any], unusual: st.SearchStrategy[Any], one_in: int) -> Any:
    """``unusual`` one time in ``one_in``, else ``usual`` (one_of would draw each as often)."""
    return st.integers(1, one_in).flatmap(lambda draw: unusual if draw == 1 else usual)


_VALID_ADDRESS = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(string.ascii_letters + string.digits + ".+-_", min_size=1, max_size=12).filter(
        lambda local: not (local.startswith(".") or local.endswith(".") or ".." in local)
    )
    | st.sampled_from(["jörg", "用户", '"two words"']),
    st.sampled_from(
        [
            "example.com",
            "corp.local",
            "mailhub",
            "localhost",
            "[10.0.0.5]",
            "[IPv6:::1]",
            "bücher.example",
        ]
    ),
)
_MALFORMED_ADDRESS = st.sampled_from(
    ["plain", "a@-bad.example", "a@b..example", "a@example.com.", "a@b@example.com", ".a@x.com"]
) | st.text(max_size=20)
# One address in twenty is malformed: most messages get through and are checked on arrival.
_ADDRESS = _mostly(_VALID_ADDRESS, _MALFORMED_ADDRESS, one_in=20)

# Text as producers send it, and one time in five as hostile ones do: controls, NUL, line and
# paragraph separators, lone CRs.
_HOSTILE_CHARACTERS = st.sampled_from(["\r\n", "\n", "\r", "\x00", "\x1b", "\u2028", "\t"])
_CLEAN_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Zl", "Zp"]), max_size=80
)
_HOSTILE_TEXT = st.lists(st.characters(codec="utf-8") | _HOSTILE_CHARACTERS, max_size=80).map(
    "".join
)
_LINE = _mostly(_CLEAN_TEXT, _HOSTILE_TEXT, one_in=5)
_BODY = st.one_of(_CLEAN_TEXT, _HOSTILE_TEXT)
_HEADER_NAME = _mostly(
    st.sampled_from(["X-Flow", "X-Run-Id", "x-flow", "X-Priority-Note"]),
    st.sampled_from(["Received", "Content-Type", "Resent-To", "Bad Name", "X:Y", "Message-ID"]),
    one_in=4,
)


def _attachment(name: str, content_type: str, content: bytes) -> dict[str, str]:
    return {
        "name": name,
        "content_type": content_type,
        "content_base64": base64.b64encode(content).decode(),
    }


_ATTACHMENT = st.builds(
    _attachment,
    _mostly(
        st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=16),
        st.sampled_from(["../etc/passwd", "", "a\nb.txt", "naïve résumé.pdf"]),
        one_in=4,
    ),
    st.sampled_from(["text/plain", "application/pdf", "image/png", "text/csv", "not a type"]),
    st.binary(max_size=300),
)


def messages() -> st.SearchStrategy[dict[str, Any]]:
    """JSON-ready messages: most are valid, many are not in exactly one or two fields."""
    return st.fixed_dictionaries(
        {"to": st.lists(_ADDRESS, min_size=1, max_size=3), "subject": _LINE},
        optional={
            "cc": st.lists(_ADDRESS, max_size=2),
            "bcc": st.lists(_ADDRESS, max_size=2),
            "reply_to": st.lists(_ADDRESS, max_size=1),
            "text": _BODY,
            "html": _BODY.map(lambda body: f"<p>{body}</p>"),
            "headers": st.dictionaries(_HEADER_NAME, _LINE, max_size=2),
            "attachments": st.lists(_ATTACHMENT, max_size=2),
        },
    )


def _as_sent(body: str) -> str:
    """A body as a reader gets it back: every line break is one, the last line ends in one."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n")
    return lines if lines.endswith("\n") else lines + "\n"


def _as_read(content: str) -> str:
    """A received body as a reader shows it. A text part in base64 carries its canonical CRLF
    line breaks (RFC 2045 §6.8) inside the encoding, so decoding gives them back as CRLF,
    where quoted-printable and 8bit give LF."""
    return content.replace("\r\n", "\n")


def _header_as_sent(value: str) -> str:
    """A header value as a reader gets it back: RFC 5322 parsers (the stdlib's among them)
    drop the whitespace that opens a field body, so a subject of one tab reads as empty."""
    return value.lstrip(" \t")


def _addresses(mime: EmailMessage, name: str) -> list[str]:
    header = mime[name]
    if header is None:
        return []
    # Parsed again from its decoded text: the stdlib leaves a UTF-8 header's addresses with
    # surrogate escapes (RFC 6532 messages), but decodes the text right.
    parsed = HeaderRegistry()(name, str(header))
    assert isinstance(parsed, AddressHeader)
    return [address.addr_spec for address in parsed.addresses]


def assert_arrived_intact(sent: dict[str, Any], mime: EmailMessage) -> None:
    """Every header and body of ``sent`` parsed back from ``mime`` equal (addresses in the
    form they are sent in)."""
    for field, header in (("to", "To"), ("cc", "Cc"), ("reply_to", "Reply-To")):
        assert _addresses(mime, header) == [mailbox_address(a) for a in sent.get(field, [])]
    assert mime["Bcc"] is None
    assert mime["Subject"] == _header_as_sent(sent["subject"])
    for name, value in sent.get("headers", {}).items():
        assert mime[name] == _header_as_sent(value)
    text, html = sent.get("text"), sent.get("html")
    if text is not None:
        assert _as_read(body_text(mime, "plain")) == _as_sent(text)
    if html is not None:
        assert _as_read(body_text(mime, "html")) == _as_sent(html)
    attachments = [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in mime.iter_attachments()
    ]
    assert attachments == [
        (a["name"], a["content_type"], base64.b64decode(a["content_base64"]))
        for a in sent.get("attachments", [])
    ]
