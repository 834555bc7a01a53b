"""Retry timing: exponential backoff with full jitter, bounded, honouring Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait between attempts of one delivery."""

    base_seconds: float = 10.0
    max_seconds: float = 600.0
    max_attempts: int = 8
    # A server's Retry-After is honoured beyond max_seconds, up to this bound (kept below the
    # broker's visibility timeout by the process settings).
    max_retry_after_seconds: float = 1800.0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def allows_another_attempt(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def delay(self, attempts_made: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``attempts_made`` failed attempts (1 for the first retry)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempts_made - 1, 0))
        # Full jitter spreads the retries of a failed batch instead of synchronizing them.
        wait = float(self.random() * ceiling)
        if retry_after is None:
            return wait
        return min(max(wait, retry_after), self.max_retry_after_seconds)
