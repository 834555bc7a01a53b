"""Translation of HTTP connection failures (httpx) into delivery errors, for Graph and tokens."""

from __future__ import annotations

import ssl

import httpx

from config.errors import ConfigurationError, DeliveryError, TransientError

__all__ = ["transport_error"]


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
