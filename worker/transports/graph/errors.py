"""Translation of HTTP failures (Graph and the identity platform) into delivery errors."""

from __future__ import annotations

import ssl

import httpx

from config.errors import (
    ConfigurationError,
    DeliveryError,
    TransientError,
)
from worker.classify import FailureKind, HttpStatus, classify, delivery_error
from worker.retry_after import parse_retry_after

__all__ = ["graph_error", "transport_error"]


def graph_error(response: httpx.Response, now: float) -> DeliveryError:
    """The error for a Graph error response, with Graph's own code and message."""
    code, message = "", response.reason_phrase
    try:
        detail = response.json().get("error", {})
        code, message = str(detail.get("code", "")), str(detail.get("message", message))
    except (ValueError, AttributeError):
        pass
    reply = f"{code}: {message}" if code else message
    reason = f"Microsoft Graph answered {response.status_code} {reply}"
    kind = classify(HttpStatus(response.status_code))
    retry_after = None
    if kind is FailureKind.TRANSIENT or kind.pauses_account:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    return delivery_error(
        kind, reason, code=response.status_code, reply=reply, retry_after=retry_after
    )


def transport_error(exc: httpx.TransportError, where: str) -> DeliveryError:
    """Connection-level failures: untrusted certificates need an operator, the rest a retry."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return ConfigurationError(
                f"certificate of {where} not trusted ({current.verify_message}); "
                "trust its CA with OUTBOX_CA_BUNDLE"
            )
        current = current.__cause__ or current.__context__
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"timed out talking to {where}")
    return TransientError(f"cannot reach {where}: {type(exc).__name__}: {exc}")
