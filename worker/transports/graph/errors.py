"""Translation of Microsoft Graph's error answers into delivery errors."""

from __future__ import annotations

import httpx

from config.errors import DeliveryError
from worker.classify import FailureKind, HttpStatus, classify, delivery_error
from worker.retry_after import parse_retry_after

__all__ = ["graph_error"]


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
