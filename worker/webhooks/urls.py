"""Which URLs an endpoint may have: https, or http to a loopback host (a local receiver)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpx

from config.errors import InvalidInputError

__all__ = ["check_url", "is_loopback"]

_MAX_LENGTH = 2048


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: a receiver on the worker's own host."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """``url`` when an endpoint may have it, else ``InvalidInputError`` naming ``url``.

    Events carry recipients' addresses and the servers' replies: in the clear only to a
    receiver on this host."""
    text = url.strip()
    if not text:
        raise InvalidInputError("give the receiver's URL", field="url")
    if len(text) > _MAX_LENGTH:
        raise InvalidInputError(f"at most {_MAX_LENGTH} characters", field="url")
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        _ = parts.port  # a port that is not a number raises here
        httpx.URL(text)  # as the dispatcher will send to it: e.g. a host that is no IDNA name
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidInputError(f"not a URL: {exc}", field="url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise InvalidInputError(
            "must be an https:// URL with a host (http:// only to a loopback host)", field="url"
        )
    if scheme == "http" and not is_loopback(host):
        raise InvalidInputError(
            f"must be https:// ({host} is not a loopback host; http:// is allowed only to "
            "127.0.0.0/8, ::1 and localhost)",
            field="url",
        )
    if "@" in parts.netloc:
        # Listed in the clear to every administrator and in each delivery's record: a password
        # does not belong there. The signature already proves to the receiver who sent it.
        raise InvalidInputError(
            "must not hold a user name or password (user@host); verify the signature instead",
            field="url",
        )
    if any(character.isspace() or ord(character) < 0x20 for character in text):
        raise InvalidInputError("must not hold spaces or control characters", field="url")
    return text
