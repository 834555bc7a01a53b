"""Backoff: exponential ceiling, full jitter, the cap, Retry-After, the attempt budget."""

from __future__ import annotations

from worker.backoff import RetryPolicy


def test_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=10, max_seconds=600, max_attempts=8, random=lambda: 1.0)
    assert [policy.delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


def test_full_jitter_scales_the_ceiling() -> None:
    policy = RetryPolicy(base_seconds=10, max_seconds=600, random=lambda: 0.25)
    assert policy.delay(3) == 10.0  # 0.25 * 40


def test_retry_after_is_honoured_up_to_its_own_bound() -> None:
    policy = RetryPolicy(
        base_seconds=10, max_seconds=60, max_retry_after_seconds=1800, random=lambda: 0.0
    )
    assert policy.delay(1, retry_after=2.5) == 2.5
    assert policy.delay(1, retry_after=120) == 120  # beyond max_seconds: the server asked
    assert policy.delay(1, retry_after=7200) == 1800


def test_attempt_budget() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.allows_another_attempt(2)
    assert not policy.allows_another_attempt(3)
