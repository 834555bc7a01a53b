"""The failure classifier, table-tested: retried, failed at once, or for an operator to fix."""

from __future__ import annotations

import pytest

from worker.classify import (
    ConnectionProblem,
    Failure,
    FailureKind,
    HttpStatus,
    SmtpReply,
    classify,
)

T, P, C = FailureKind.TRANSIENT, FailureKind.PERMANENT, FailureKind.CONFIGURATION


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (SmtpReply(421, "connect"), T),
        (SmtpReply(450, "rcpt"), T),
        (SmtpReply(451, "data"), T),
        (SmtpReply(452, "rcpt"), T),
        (SmtpReply(454, "auth"), T),  # temporary authentication failure
        (SmtpReply(550, "rcpt"), P),
        (SmtpReply(552, "data"), P),
        (SmtpReply(554, "data"), P),
        (SmtpReply(553, "mail"), P),
        (SmtpReply(554, "connect"), P),
        (SmtpReply(535, "auth"), C),
        (SmtpReply(534, "auth"), C),
        (SmtpReply(530, "mail"), C),  # authentication required, no username configured
        (SmtpReply(504, "auth"), C),  # mechanism unsupported
        (SmtpReply(501, "tls"), C),
        (ConnectionProblem("refused"), T),
        (ConnectionProblem("timeout"), T),
        (ConnectionProblem("disconnected"), T),
        (ConnectionProblem("dns"), T),
        (ConnectionProblem("certificate"), C),
        (ConnectionProblem("tls"), C),
        (HttpStatus(429), T),
        (HttpStatus(503), T),
        (HttpStatus(504), T),
        (HttpStatus(500), T),
        (HttpStatus(401), C),
        (HttpStatus(400), P),
        (HttpStatus(403), P),
        (HttpStatus(404), P),
        (HttpStatus(413), P),
    ],
)
def test_classify(failure: Failure, expected: FailureKind) -> None:
    assert classify(failure) is expected
