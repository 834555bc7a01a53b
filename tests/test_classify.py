"""The failure classifier, table-tested: retried, failed at once, for an operator to fix, a
provider's quota (the account pauses), or too many recipients for one transaction."""

from __future__ import annotations

import pytest

from worker.classify import (
    ConnectionProblem,
    Failure,
    FailureKind,
    HttpStatus,
    SmtpReply,
    classify,
    enhanced_status,
    judge,
)

T, P, C = FailureKind.TRANSIENT, FailureKind.PERMANENT, FailureKind.CONFIGURATION
Q, D, R = FailureKind.THROTTLED, FailureKind.DAILY_QUOTA, FailureKind.RECIPIENT_LIMIT

QUOTA_554 = (
    "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process "
    "message due to a permanent exception with message Cannot submit message."
)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        # The basic code alone, as servers without enhanced codes answer.
        (SmtpReply(421, "connect"), T),
        (SmtpReply(450, "rcpt"), T),
        (SmtpReply(451, "data"), T),
        (SmtpReply(452, "rcpt"), R),  # RFC 5321 §4.5.3.1.10: too many recipients
        (SmtpReply(452, "data"), T),  # insufficient storage
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
        # Providers' dialects: the enhanced code decides before the basic one.
        (SmtpReply(554, "data", QUOTA_554), Q),  # Exchange Online's per-minute quota
        (SmtpReply(554, "data", "5.2.0 STOREDRV.Submission.Exception:OtherException"), P),
        (SmtpReply(432, "data", "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"), Q),
        (SmtpReply(421, "connect", "4.7.0 Try again later, closing connection. (EHLO)"), Q),
        (SmtpReply(421, "mail", "4.4.2 mx.example.com Error: timeout exceeded"), Q),
        (SmtpReply(454, "auth", "4.7.0 Temporary authentication failure"), T),
        (SmtpReply(550, "data", "5.4.5 Daily user sending limit exceeded."), D),
        (SmtpReply(550, "rcpt", "5.4.5 Daily SMTP relay limit exceeded for user."), D),
        (
            SmtpReply(
                550,
                "data",
                "5.1.90 Your message can't be sent because you've reached your daily limit "
                "for message recipients",
            ),
            D,
        ),
        (SmtpReply(452, "rcpt", "4.5.3 Too many recipients"), R),
        (SmtpReply(552, "rcpt", "5.5.3 Too many recipients"), R),
        (SmtpReply(452, "data", "4.5.3 Too many recipients"), T),  # only RCPT splits
        (
            SmtpReply(
                550, "auth", "5.7.30 Basic authentication is not supported for Client Submission"
            ),
            C,
        ),
        (
            SmtpReply(
                535,
                "auth",
                "5.7.139 Authentication unsuccessful, basic authentication is disabled.",
            ),
            C,
        ),
        (
            SmtpReply(
                550, "mail", "5.7.60 SMTP; Client does not have permissions to send as this sender"
            ),
            C,
        ),
        (SmtpReply(535, "auth", "5.7.3 Authentication unsuccessful"), C),
        (SmtpReply(550, "rcpt", "5.7.1 Unable to relay"), P),  # 5.7.x per recipient: refused
        (SmtpReply(550, "rcpt", "5.1.1 User unknown"), P),
        (SmtpReply(550, "data", "4.2.2 Mailbox full, try later"), T),  # the enhanced class wins
        (SmtpReply(451, "data", "5.6.0 Message content rejected"), P),
        (ConnectionProblem("refused"), T),
        (ConnectionProblem("timeout"), T),
        (ConnectionProblem("disconnected"), T),
        (ConnectionProblem("dns"), T),
        (ConnectionProblem("certificate"), C),
        (ConnectionProblem("tls"), C),
        (HttpStatus(429), Q),  # Graph throttles per mailbox: the account pauses
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


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("5.7.30 Basic authentication is not supported", "5.7.30"),
        ("2.0.0 OK <id@x> [Hostname=AM0PR]", "2.0.0"),
        ("4.5.3 Too many recipients", "4.5.3"),
        ("Too many recipients", None),
        ("5.7.3", "5.7.3"),
        ("3.1.1 not a class", None),
        ("5.7.30x trailing", None),
        ("", None),
    ],
)
def test_enhanced_status_is_read_from_the_start_of_the_text(text: str, code: str | None) -> None:
    assert enhanced_status(text) == code


def test_basic_authentication_refusals_tell_the_administrator_to_use_oauth2() -> None:
    for text in (
        "5.7.30 Basic authentication is not supported for Client Submission",
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
    ):
        advice = judge(SmtpReply(535, "auth", text)).advice
        assert advice is not None
        assert "OAuth 2.0" in advice
        assert "--auth oauth2" in advice


def test_send_as_refusal_names_the_fix() -> None:
    advice = judge(SmtpReply(550, "mail", "5.7.60 SMTP; Client does not have permissions")).advice
    assert advice is not None
    assert "Send As" in advice
