"""Standard Webhooks signatures: the ``whsec_`` secret, the message id and the three headers.

The specification (https://www.standardwebhooks.com, "Signature scheme"): the content signed
is ``{msg_id}.{timestamp}.{body}``, HMAC-SHA256 keyed with the secret's bytes (base64 after
``whsec_``), sent as ``webhook-signature: v1,<base64 signature>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "message_id", "new_secret", "secret_key", "sign", "signed_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# The specification asks for at least 24 random bytes (and at most 64).
_SECRET_BYTES = 32


def new_secret() -> str:
    """A new endpoint's signing secret, as the specification serializes it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def message_id(event: str, endpoint_id: str) -> str:
    """The ``webhook-id`` of one event to one endpoint: derived from both, so a fan-out run
    twice (two workers, or one again after a lost reply) stores it once, and every retry
    carries the same id for the receiver to drop duplicates by. No '.' in it, as the
    specification requires of ids that are part of the signed content."""
    digest = hashlib.sha256(f"{endpoint_id}\n{event}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body`` sent as ``msg_id`` at ``timestamp``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: the same id every time, this attempt's timestamp."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }
