"""The one decision of what a failure means: retry, fail, fix the settings, or pause the account.

SMTP replies are judged by their enhanced status code (RFC 3463, ``class.subject.detail``)
before their three-digit code: providers answer quotas with 5xx codes although the message
would go through later, and a code such as 5.7.30 says exactly what the administrator must
change. The rules are one table (``SMTP_RULES``), tested row by row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from config.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    QuotaError,
    TransientError,
)

__all__ = [
    "SMTP_RULES",
    "ConnectionProblem",
    "ConnectionProblemKind",
    "Failure",
    "FailureKind",
    "HttpStatus",
    "SmtpPhase",
    "SmtpReply",
    "SmtpRule",
    "Verdict",
    "classify",
    "delivery_error",
    "enhanced_status",
    "error_type",
    "judge",
]

SmtpPhase = Literal["connect", "tls", "auth", "mail", "rcpt", "data"]
ConnectionProblemKind = Literal["refused", "timeout", "disconnected", "dns", "certificate", "tls"]

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # retried with backoff, counted against the attempt limit
    PERMANENT = "permanent"  # failed at once (for the recipient the reply was about)
    CONFIGURATION = "configuration"  # the settings are wrong: no blind retries
    THROTTLED = "throttled"  # the provider's rate quota: pause the account, then go on
    DAILY_QUOTA = "daily_quota"  # the provider's daily limit: pause until the next day's window
    RECIPIENT_LIMIT = "recipient_limit"  # too many in this transaction: the rest in the next

    @property
    def pauses_account(self) -> bool:
        return self in (FailureKind.THROTTLED, FailureKind.DAILY_QUOTA)


def enhanced_status(text: str | None) -> str | None:
    """The enhanced status code that opens a reply's text (``"5.7.30"``), if it has one."""
    if not text:
        return None
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """An SMTP error reply, the phase of the session it answered, and its text."""

    code: int
    phase: SmtpPhase
    text: str = ""

    @property
    def enhanced(self) -> str | None:
        return enhanced_status(self.text)


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """No usable SMTP reply: the connection failed or was lost."""

    kind: ConnectionProblemKind


@dataclass(frozen=True, slots=True)
class HttpStatus:
    """An error status from Microsoft Graph (or the identity platform)."""

    status: int


Failure = SmtpReply | ConnectionProblem | HttpStatus


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a failure means, and what the administrator should do about it, if anything."""

    kind: FailureKind
    advice: str | None = None


@dataclass(frozen=True, slots=True)
class SmtpRule:
    """Replies with this enhanced code (``detail`` "*": any), in these phases (empty: any),
    whose text holds ``words`` (case-insensitive), mean ``verdict``."""

    enhanced: str
    verdict: Verdict
    phases: frozenset[SmtpPhase] = frozenset()
    words: str = ""

    def matches(self, reply: SmtpReply, enhanced: str) -> bool:
        wanted_class, wanted_subject, wanted_detail = self.enhanced.split(".")
        got_class, got_subject, got_detail = enhanced.split(".")
        return (
            (wanted_class, wanted_subject) == (got_class, got_subject)
            and wanted_detail in ("*", got_detail)
            and (not self.phases or reply.phase in self.phases)
            and self.words.lower() in reply.text.lower()
        )


_USE_OAUTH2 = (
    "the server no longer accepts passwords for SMTP (Microsoft 365 turned basic "
    "authentication off): set Authentication to OAuth 2.0 (outbox settings set smtp "
    "--auth oauth2 --tenant ... --client-id ... --client-secret-stdin)"
)
_SEND_AS = (
    "the mailbox that logs in may not send as the from mailbox: make them the same, or grant "
    "the login Send As permission on the from mailbox"
)
_AFTER_TLS: tuple[SmtpPhase, ...] = ("mail", "rcpt", "data")

# First match wins. Each row cites the provider's published reply it was written for.
SMTP_RULES: tuple[SmtpRule, ...] = (
    # Exchange Online, "SMTP AUTH client submission" retirement: 550 5.7.30 Basic
    # authentication is not supported for Client Submission; 535 5.7.139 Authentication
    # unsuccessful, basic authentication is disabled / SmtpClientAuthentication is disabled.
    SmtpRule("5.7.30", Verdict(FailureKind.CONFIGURATION, _USE_OAUTH2)),
    SmtpRule("5.7.139", Verdict(FailureKind.CONFIGURATION, _USE_OAUTH2)),
    # Exchange Online NDR 5.7.60: "Client does not have permissions to send as this sender".
    SmtpRule("5.7.60", Verdict(FailureKind.CONFIGURATION, _SEND_AS)),
    # Exchange Online: 554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException,
    # its per-minute submission quota (30 messages a minute).
    SmtpRule("5.2.0", Verdict(FailureKind.THROTTLED), words="SubmissionQuotaExceeded"),
    # Exchange Online NDR 5.1.90: "daily limit for message recipients" (10,000 a day).
    SmtpRule("5.1.90", Verdict(FailureKind.DAILY_QUOTA)),
    # Gmail / Google Workspace: 550 5.4.5 Daily user sending limit exceeded (also the
    # SMTP relay's "Daily SMTP relay limit exceeded for user").
    SmtpRule("5.4.5", Verdict(FailureKind.DAILY_QUOTA)),
    # Exchange Online throttling: 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded.
    SmtpRule("4.3.2", Verdict(FailureKind.THROTTLED)),
    # 4.4.2 (RFC 3463 "bad connection"), as Gmail closes a session it throttles.
    SmtpRule("4.4.2", Verdict(FailureKind.THROTTLED)),
    # "421 4.7.0 Try again later" (Exchange Online, Gmail): throttling, except at AUTH, where
    # 454 4.7.0 is RFC 4954's "temporary authentication failure".
    SmtpRule("4.7.0", Verdict(FailureKind.THROTTLED), phases=frozenset(("connect", *_AFTER_TLS))),
    # RFC 5321 §4.5.3.1.10 / RFC 3463 X.5.3: too many recipients for this transaction.
    SmtpRule("4.5.3", Verdict(FailureKind.RECIPIENT_LIMIT), phases=frozenset({"rcpt"})),
    SmtpRule("5.5.3", Verdict(FailureKind.RECIPIENT_LIMIT), phases=frozenset({"rcpt"})),
    # Any other 5.7.x at AUTH: the credentials or the account are refused.
    SmtpRule("5.7.*", Verdict(FailureKind.CONFIGURATION), phases=frozenset({"auth"})),
)

# Replies that mean "your credentials or authorization are wrong" whatever the phase:
# 530 authentication required, 534 mechanism too weak, 535 credentials invalid,
# 538 encryption required for the mechanism.
_AUTH_CODES = frozenset({530, 534, 535, 538})
# Graph: a server-side hiccup worth retrying, honouring Retry-After.
_TRANSIENT_HTTP = frozenset({408, 500, 502, 503, 504})


def judge(failure: Failure) -> Verdict:
    """The verdict on one failure; ``classify`` when only the kind matters."""
    match failure:
        case SmtpReply():
            return _judge_reply(failure)
        case ConnectionProblem(kind="certificate" | "tls"):
            return Verdict(FailureKind.CONFIGURATION)
        case ConnectionProblem():
            return Verdict(FailureKind.TRANSIENT)
        case HttpStatus(status=429):
            # Graph's throttling is per mailbox: every worker pauses, for its Retry-After.
            return Verdict(FailureKind.THROTTLED)
        case HttpStatus(status=status) if status in _TRANSIENT_HTTP:
            return Verdict(FailureKind.TRANSIENT)
        case HttpStatus(status=401):
            # Reached only after the token was refreshed once: the credentials are wrong.
            return Verdict(FailureKind.CONFIGURATION)
        case HttpStatus():
            return Verdict(FailureKind.PERMANENT)


def classify(failure: Failure) -> FailureKind:
    """Transient failures are retried with backoff; quotas pause the account; the others are
    recorded at once."""
    return judge(failure).kind


def _judge_reply(reply: SmtpReply) -> Verdict:
    enhanced = reply.enhanced
    if enhanced is not None:
        for rule in SMTP_RULES:
            if rule.matches(reply, enhanced):
                return rule.verdict
    code = reply.code
    if code in _AUTH_CODES:
        return Verdict(FailureKind.CONFIGURATION)
    if code >= 500 and reply.phase in ("auth", "tls"):
        return Verdict(FailureKind.CONFIGURATION)
    if code == 452 and reply.phase == "rcpt" and enhanced is None:
        # RFC 5321 §4.5.3.1.10: "452 too many recipients"; the client sends the rest later.
        return Verdict(FailureKind.RECIPIENT_LIMIT)
    # Where the enhanced class disagrees with the code's, the enhanced one is the precise one.
    temporary = enhanced[0] == "4" if enhanced else 400 <= code < 500
    return Verdict(FailureKind.TRANSIENT if temporary else FailureKind.PERMANENT)


def error_type(kind: FailureKind) -> type[DeliveryError]:
    """The error class for what the classifier decided."""
    return {
        FailureKind.TRANSIENT: TransientError,
        FailureKind.PERMANENT: PermanentError,
        FailureKind.CONFIGURATION: ConfigurationError,
        FailureKind.THROTTLED: QuotaError,
        FailureKind.DAILY_QUOTA: QuotaError,
        # Reached only when a whole message meets it; per recipient the transport splits.
        FailureKind.RECIPIENT_LIMIT: TransientError,
    }[kind]


def delivery_error(
    kind: FailureKind,
    reason: str,
    *,
    code: int | None = None,
    reply: str | None = None,
    retry_after: float | None = None,
) -> DeliveryError:
    """The error for what the classifier decided, with the data its handler needs."""
    if kind.pauses_account:
        return QuotaError(
            reason,
            code=code,
            reply=reply,
            retry_after=retry_after,
            daily=kind is FailureKind.DAILY_QUOTA,
        )
    if error_type(kind) is TransientError:
        return TransientError(reason, code=code, reply=reply, retry_after=retry_after)
    return error_type(kind)(reason, code=code, reply=reply)
