"""The one decision of whether a failure is transient, permanent or a configuration problem."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = [
    "ConnectionProblem",
    "ConnectionProblemKind",
    "Failure",
    "FailureKind",
    "HttpStatus",
    "SmtpPhase",
    "SmtpReply",
    "classify",
]

SmtpPhase = Literal["connect", "tls", "auth", "mail", "rcpt", "data"]
ConnectionProblemKind = Literal["refused", "timeout", "disconnected", "dns", "certificate", "tls"]


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """An SMTP error reply and the phase of the session it answered."""

    code: int
    phase: SmtpPhase


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """No usable SMTP reply: the connection failed or was lost."""

    kind: ConnectionProblemKind


@dataclass(frozen=True, slots=True)
class HttpStatus:
    """An error status from Microsoft Graph (or the identity platform)."""

    status: int


Failure = SmtpReply | ConnectionProblem | HttpStatus

# Replies that mean "your credentials or authorization are wrong" whatever the phase:
# 530 authentication required, 534 mechanism too weak, 535 credentials invalid,
# 538 encryption required for the mechanism.
_AUTH_CODES = frozenset({530, 534, 535, 538})
# Graph: throttled (429) or a server-side hiccup worth retrying, honouring Retry-After.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def classify(failure: Failure) -> FailureKind:
    """Transient failures are retried with backoff; the others are recorded at once."""
    match failure:
        case SmtpReply(code=code) if code in _AUTH_CODES:
            return FailureKind.CONFIGURATION
        case SmtpReply(code=code, phase="auth") if code >= 500:
            return FailureKind.CONFIGURATION
        case SmtpReply(code=code, phase="tls") if code >= 500:
            return FailureKind.CONFIGURATION
        case SmtpReply(code=code) if 400 <= code < 500:
            return FailureKind.TRANSIENT
        case SmtpReply():
            return FailureKind.PERMANENT
        case ConnectionProblem(kind="certificate" | "tls"):
            return FailureKind.CONFIGURATION
        case ConnectionProblem():
            return FailureKind.TRANSIENT
        case HttpStatus(status=status) if status in _TRANSIENT_HTTP:
            return FailureKind.TRANSIENT
        case HttpStatus(status=401):
            # Reached only after the token was refreshed once: the credentials are wrong.
            return FailureKind.CONFIGURATION
        case HttpStatus():
            return FailureKind.PERMANENT
