"""Message validation at the edge: clear errors naming the field; header injection refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.message_input import MessageInput, describe_validation_error


def problems(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        MessageInput.model_validate({"to": ["a@example.com"], "subject": "s", **fields})
    return describe_validation_error(caught.value)


def test_valid_message_normalizes_addresses() -> None:
    message = MessageInput.model_validate(
        {"to": ["Someone@Example.COM"], "subject": "hi", "text": "t"}
    )
    assert message.to == ["Someone@example.com"]


def test_bad_address_names_its_position() -> None:
    assert problems(cc=["ok@example.com", "not-an-address"]).startswith("cc[1]: ")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subject": "hello\r\nBcc: victim@example.com"}, "subject"),
        ({"headers": {"X-Tag": "a\nBcc: victim@example.com"}}, "headers"),
        ({"headers": {"Bcc": "victim@example.com"}}, "headers"),
        ({"headers": {"Bad Name": "x"}}, "headers"),
        ({"to": ["a@example.com\r\nRCPT TO:<b@example.com>"]}, "to[0]"),
        ({"attachments": [{"name": "../etc/passwd", "content": b"x"}]}, "attachments[0].name"),
        ({"attachments": [{"name": "a", "content_base64": "***"}]}, "attachments[0]"),
        (
            {"attachments": [{"name": "a", "content": b"", "content_type": "nope"}]},
            "attachments[0].content_type",
        ),
        ({"idempotency_key": "has space"}, "idempotency_key"),
        ({"subject": "line\u2028separator"}, "subject"),
        ({"headers": {"X-Tag": "a\u0085b"}}, "headers"),
        ({"subject": "a\x00b"}, "subject"),  # NUL, wherever it stands
        ({"subject": "bell\x07"}, "subject"),
        ({"headers": {"X-Tag": "\x1bescape"}}, "headers"),
        ({"headers": {"Received": "from evil"}}, "headers"),
        ({"headers": {"Resent-To": "victim@example.com"}}, "headers"),
        ({"headers": {"Content-Type": "text/html"}}, "headers"),
        ({"headers": {"Return-Path": "<x@example.com>"}}, "headers"),
        ({"headers": {"DKIM-Signature": "v=1"}}, "headers"),
        ({"headers": {"Authentication-Results": "mx; dkim=pass"}}, "headers"),
        ({"headers": {"ARC-Seal": "i=1; cv=none"}}, "headers"),
        ({"headers": {"arc-authentication-results": "i=1; spf=pass"}}, "headers"),
        ({"headers": {"Orig-Date": "Mon, 1 Jan 2024 00:00:00 +0000"}}, "headers"),
        ({"headers": {"X-A": "1", "x-a": "2"}}, "headers"),
        ({"to": ["ok@example.com", "a@b@example.com"]}, "to[1]"),
        ({"reply_to": ["a@-bad.example"]}, "reply_to[0]"),
        ({"bcc": ["a@[300.0.0.1]"]}, "bcc[0]"),
    ],
)
def test_injection_and_bad_fields_are_refused(fields: dict[str, object], field: str) -> None:
    assert problems(**fields).startswith(f"{field}: ")


def test_a_recipient_is_required() -> None:
    assert "at least one recipient" in problems(to=[])


def test_attachment_from_base64() -> None:
    message = MessageInput.model_validate(
        {
            "to": ["a@example.com"],
            "subject": "s",
            "attachments": [
                {"name": "a.txt", "content_type": "text/plain", "content_base64": "aGk="}
            ],
        }
    )
    assert message.attachments[0].content == b"hi"


def test_controls_are_named_by_code_and_position() -> None:
    assert problems(subject="a\x00b") == (
        "subject: must not contain control characters: U+0000 at position 2"
    )
    assert "same header" in problems(headers={"X-A": "1", "x-a": "2"})


def test_a_tab_is_fine_in_a_subject_and_a_header() -> None:
    message = MessageInput.model_validate(
        {"to": ["a@example.com"], "subject": "a\tb", "headers": {"X-Tag": "c\td"}}
    )
    assert message.subject == "a\tb"


def test_size_counts_encoded_bytes_not_characters() -> None:
    message = MessageInput.model_validate(
        {"to": ["a@example.com"], "subject": "s", "text": "é" * 60_000}
    )
    assert message.sizes()["text"] == 120_000
    assert message.size() == 120_000 + len("s")
