"""Secrets out of what outbox keeps and shows of a failure: error reasons and server replies.

A server, a proxy or the identity platform may quote what it was sent (a password, a client
secret, an access token, the base64 of an AUTH exchange) in its answer. Every transport passes
what it records or raises through ``scrub`` or ``scrub_error`` first, with the secrets it
knows it sent, so that no delivery record, attempt, log line or API answer holds one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from config.errors import DeliveryError

__all__ = ["MASK", "scrub", "scrub_error"]

MASK = "********"  # as the settings show a stored secret

_Error = TypeVar("_Error", bound=DeliveryError)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each (non-empty) secret replaced by ``MASK``."""
    # Longest first: a secret inside a longer one (the password in the base64 of an AUTH
    # PLAIN string cannot be, but a token inside a quoted header can) goes whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def scrub_error(error: _Error, secrets: Iterable[str]) -> _Error:
    """``error`` itself, its reason and reply scrubbed; its class and data are kept, so the
    handlers (retry, pause, fail) decide as before.

    When a secret was found, the exception it was translated from is cut off as well: its text
    quotes the same reply, and a traceback would show it.
    """
    secrets = tuple(secrets)
    reason = scrub(error.reason, secrets)
    reply = scrub(error.reply, secrets) if error.reply is not None else None
    if (reason, reply) == (error.reason, error.reply):
        return error
    error.reason, error.reply, error.args = reason, reply, (reason,)
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True
    return error
