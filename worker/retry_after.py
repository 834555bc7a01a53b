"""Parsing an HTTP Retry-After header: delay seconds or an HTTP date."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait, or None when the header is absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(moment.timestamp() - now, 0.0)
