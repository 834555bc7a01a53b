"""MIME building: headers, text+HTML alternative, attachments, Bcc kept out of the headers."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.smtp_delivery import body_text
from worker.message import Attachment, OutgoingMessage
from worker.mime import build_mime, build_mime_with_stdlib

MESSAGE = OutgoingMessage(
    message_id="<abc@outbox.test>",
    to=("to@example.com",),
    cc=("cc@example.com",),
    bcc=("hidden@example.com",),
    subject="Résultats du planning",
    text="plain body\n",
    html="<p>html body</p>\n",
    reply_to=("replies@example.com",),
    headers=(("X-Run-Id", "42"),),
    attachments=(Attachment("report.csv", "text/csv", b"a,b\n1,2\n"),),
)


def test_headers_bodies_and_attachment() -> None:
    raw = build_mime(MESSAGE, "sender@example.com", 1_700_000_000.0)
    # Parsed as a mail client stores it (LF lines); CRLF on the wire is checked below.
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert parsed["From"] == "sender@example.com"
    assert parsed["To"] == "to@example.com"
    assert parsed["Cc"] == "cc@example.com"
    assert parsed["Reply-To"] == "replies@example.com"
    assert parsed["Subject"] == "Résultats du planning"
    assert parsed["Message-ID"] == "<abc@outbox.test>"
    assert parsed["X-Run-Id"] == "42"
    assert parsed["Date"].datetime.timestamp() == 1_700_000_000
    assert parsed["Bcc"] is None
    assert b"hidden@example.com" not in raw
    assert body_text(parsed, "plain") == "plain body\n"
    assert body_text(parsed, "html") == "<p>html body</p>\n"
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_payload(decode=True) == b"a,b\n1,2\n"


def test_lines_end_in_crlf() -> None:
    raw = build_mime(MESSAGE, "sender@example.com", 0.0)
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_html_only() -> None:
    message = OutgoingMessage(
        message_id="<m@x>", to=("a@example.com",), subject="s", html="<b>x</b>"
    )
    parsed = email.message_from_bytes(build_mime(message, "s@example.com", 0.0))
    assert parsed.get_content_type() == "text/html"


def test_long_address_lists_fold_and_parse_back() -> None:
    recipients = tuple(f"recipient.number.{n}@example.com" for n in range(12))
    message = OutgoingMessage(message_id="<m@x>", to=recipients, subject="s", text="t")
    raw = build_mime(message, "s@example.com", 0.0)
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert [a.addr_spec for a in parsed["To"].addresses] == list(recipients)


def test_a_line_break_never_reaches_the_headers() -> None:
    message = OutgoingMessage(message_id="<m@x>", to=("a@example.com",), subject="x\r\nBcc: y")
    with pytest.raises(ValueError, match="line breaks"):
        build_mime(message, "s@example.com", 0.0)


_LINE_PIECES = st.sampled_from(
    ["", "a", "plain words ", "é", "日本語", "\t", " ", ".", "..", "From ", "=", "\r", "\n", "\r\n"]
)
_BODIES = st.one_of(
    st.lists(_LINE_PIECES, max_size=40).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.integers(70, 90).map(lambda width: "x" * width + "\n"),  # around the 78 limit
)


@settings(max_examples=400, deadline=None)
@given(
    body=_BODIES,
    html=st.booleans(),
    utf8=st.booleans(),
    subject=st.sampled_from(["s", "Résultats", "a long subject " * 8]),
    to=st.sampled_from([("a@example.com",), ("jörg@example.com",), ("x@example.com",) * 9]),
)
def test_plain_bodies_are_built_exactly_as_the_stdlib_builds_them(
    body: str, html: bool, utf8: bool, subject: str, to: tuple[str, ...]
) -> None:
    # Single text parts skip the stdlib's content manager and generator: the bytes must not
    # differ in any way from what those would have produced.
    message = OutgoingMessage(
        message_id="<m@x>",
        to=to,
        subject=subject,
        text=None if html else body,
        html=body if html else None,
        headers=(("X-Run-Id", "42"),),
    )
    date = 1_700_000_000.0
    assert build_mime(message, "s@example.com", date, utf8=utf8) == build_mime_with_stdlib(
        message, "s@example.com", date, utf8=utf8
    )
