"""Address syntax: intranet domains, literals and IDNs accepted; the malformed named clearly."""

from __future__ import annotations

import re

import pytest

from config.addresses import mailbox_address, needs_smtputf8


@pytest.mark.parametrize(
    ("given", "sent_as"),
    [
        ("robot@corp.local", "robot@corp.local"),  # Active Directory domains
        ("ops@mailhub", "ops@mailhub"),  # single-label host
        ("root@localhost", "root@localhost"),
        ("u@[10.0.0.5]", "u@[10.0.0.5]"),
        ("u@[IPv6:0:0:0:0:0:0:0:1]", "u@[IPv6:::1]"),
        ("x@bücher.example", "x@xn--bcher-kva.example"),  # IDNA form on the wire
        ("A.B@Example.COM", "A.B@example.com"),  # the local part keeps its case
        ("jörg@example.com", "jörg@example.com"),
        ('"two words"@example.com', '"two words"@example.com'),
    ],
)
def test_valid_addresses_are_accepted_in_the_form_they_are_sent(given: str, sent_as: str) -> None:
    assert mailbox_address(given) == sent_as


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("plain", "like name@example.com"),
        ("a@b@example.com", "one @-sign"),
        ("a@", "something after the @-sign"),
        ("a@-b.example", "not a valid host name"),
        ("a@b..example", "not a valid host name"),
        ("a@example.com.", "cannot end with a period"),
        ("a@[300.1.1.1]", "not valid"),
        ("a\x00b@example.com", "U+0000"),
        ("a@example.com\r\nRCPT TO:<b@example.com>", "line breaks (CR/LF)"),
        ("x" * 250 + "@a.example", "longer than 254 bytes"),
        ("a@10.0.0.5", "goes in brackets: [10.0.0.5]"),
    ],
)
def test_malformed_addresses_are_refused_with_the_reason(given: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        mailbox_address(given)


def test_only_non_ascii_local_parts_need_smtputf8() -> None:
    assert needs_smtputf8(mailbox_address("jörg@example.com"))
    assert not needs_smtputf8(mailbox_address("x@bücher.example"))
