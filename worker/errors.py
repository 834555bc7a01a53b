"""Delivery errors, each carrying the data needed to record and schedule it.

::

    DeliveryError
     ├── TransientError(retry_after)      try again later: 4xx, disconnect, timeout, refused
     ├── PermanentError(code, reply)      the message cannot be delivered: 5xx
     └── ConfigurationError(code, reply)  the settings are wrong or missing: fix, then retry

Library exceptions (aiosmtplib, ssl, socket) are translated once, inside the transport,
with ``raise ... from exc``; the text of each error is safe to record and show (it never
holds a secret).
"""

from __future__ import annotations

from worker.classify import FailureKind


class DeliveryError(Exception):
    """A delivery attempt did not succeed; ``reason`` says why in one line."""

    def __init__(self, reason: str, *, code: int | None = None, reply: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.reply = reply


class TransientError(DeliveryError):
    """Worth retrying later; ``retry_after`` is the server's requested wait, if it gave one."""

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        reply: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, code=code, reply=reply)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying cannot help: the server refused the message for good."""


class ConfigurationError(DeliveryError):
    """The mail settings are missing or rejected; an operator must fix them, then retry."""


def error_type(kind: FailureKind) -> type[DeliveryError]:
    """The error class for what the classifier decided."""
    return {
        FailureKind.TRANSIENT: TransientError,
        FailureKind.PERMANENT: PermanentError,
        FailureKind.CONFIGURATION: ConfigurationError,
    }[kind]
