"""When a webhook delivery is tried again: the Standard Webhooks reference schedule."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_ATTEMPTS", "RETRY_DELAYS", "delay_after"]

# The specification's example schedule ("Deliverability and reliability"), as the issue asks:
# after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h; the first attempt is immediate.
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
