"""When a webhook delivery is tried again: after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_ATTEMPTS", "RETRY_DELAYS", "delay_after"]

# The first attempt is immediate; the retries come 27.6 hours in all after it. This is the
# reference schedule that Svix, the specification's authors, publish; the specification's
# own example table ("Deliverability and reliability") shares its first six delays and goes
# on with 14 h, 20 h and 24 h. A receiver's Retry-After can lengthen a delay.
RETRY_DELAYS: tuple[float, ...] = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1


def delay_after(attempt: int, delays: Sequence[float] = RETRY_DELAYS) -> float | None:
    """Seconds from the end of failed attempt ``attempt`` (1-based) to the next one; None
    when it was the last (``len(delays) + 1`` attempts in all): the delivery has failed."""
    if attempt < 1:
        raise ValueError("attempts are counted from 1")
    if attempt > len(delays):
        return None
    return delays[attempt - 1]
