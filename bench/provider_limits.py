"""Sending limits against the Exchange Online stand-in: its quota at N per minute, a backlog of
3·N e-mails sent by two ``outbox worker`` instances, with outbox's limit at the same N and
without one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from bench.env import BenchEnv, Figures, outbox_workers
from config.mail_settings import SmtpAuth, SmtpSettings
from peers.exchange_standin import ExchangeStandIn, max_in_window
from peers.graph_standin import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
    GraphStandIn,
)
from tasks.message_input import MessageInput
from worker.records import DeliveryStatus, status_index_key

__all__ = ["LimitsRun", "measure_provider_limits"]

MAILBOX = "robot@contoso.com"
QUOTA_WINDOW_SECONDS = 60.0  # Exchange Online counts messages per minute


@dataclass(frozen=True, slots=True)
class LimitsRun:
    """What one backlog did against the stand-in's quota."""

    sent: int
    failed: int
    refusals: int
    refusals_per_window: int
    rate_vs_quota: float
    seconds: float


def measure_provider_limits(env: BenchEnv) -> Figures:
    """The figures with outbox's limit at the quota (``limit_*``) and without one
    (``quota_*``)."""
    per_minute = env.options.provider_limit
    runs: dict[bool, LimitsRun] = {}
    with GraphStandIn(env.certificate) as identity:
        for configured in (True, False):
            # A new stand-in each time: its quota window starts empty.
            with ExchangeStandIn(
                env.certificate,
                identity,
                [MAILBOX],
                messages_per_minute=per_minute,
                window_seconds=QUOTA_WINDOW_SECONDS,
                # Exchange's 3 concurrent submissions per mailbox are another limit than the
                # one measured here.
                concurrent_submissions=None,
            ) as exchange:
                label = "with outbox's limit" if configured else "without a limit"
                env.log(
                    f"provider limits: {3 * per_minute} e-mails, quota {per_minute}/min, {label}"
                )
                runs[configured] = _run(env, exchange, identity, configured)
    limited, unlimited = runs[True], runs[False]
    return {
        "limit_refusals": limited.refusals,
        "limit_failed": limited.failed,
        "limit_rate_vs_configured": limited.rate_vs_quota,
        "limit_run_seconds": limited.seconds,
        "quota_refusals": unlimited.refusals,
        "quota_refusals_per_window": unlimited.refusals_per_window,
        "quota_failed": unlimited.failed,
        "quota_sent": unlimited.sent,
        "quota_run_seconds": unlimited.seconds,
        "provider_limit_per_minute": per_minute,
    }


def _run(
    env: BenchEnv, exchange: ExchangeStandIn, identity: GraphStandIn, configured: bool
) -> LimitsRun:
    """A backlog of 3·N through two ``outbox worker`` instances sending to ``exchange``,
    with outbox's limit at N if ``configured``."""
    per_minute = env.options.provider_limit

    def counted(status: DeliveryStatus) -> int:
        return int(env.redis.zcard(status_index_key(status)))

    sent_before, failed_before = counted(DeliveryStatus.SENT), counted(DeliveryStatus.FAILED)
    env.context.settings_store.save(
        _settings(exchange, identity, per_minute if configured else None)
    )
    count = 3 * per_minute
    with outbox_workers(env, [f"limits{i}@%h" for i in range(2)]):
        _wait_until(lambda: env.workers_ready(2), 60, "two outbox workers")
        started = time.monotonic()
        env.producer.enqueue_many(
            [
                MessageInput(to=[f"qa{n}@example.com"], subject=f"run {n}", text="42 passed")
                for n in range(count)
            ]
        )

        def final() -> int:
            sent = counted(DeliveryStatus.SENT) - sent_before
            return sent + counted(DeliveryStatus.FAILED) - failed_before

        _wait_until(lambda: final() >= count, 20 * QUOTA_WINDOW_SECONDS, "the backlog")
        seconds = time.monotonic() - started
    arrivals = sorted(m.arrived_at for m in exchange.accepted_messages(MAILBOX))
    refusal_times = [r.at for r in exchange.refusals()]
    return LimitsRun(
        sent=counted(DeliveryStatus.SENT) - sent_before,
        failed=counted(DeliveryStatus.FAILED) - failed_before,
        refusals=len(refusal_times),
        refusals_per_window=max_in_window(refusal_times, QUOTA_WINDOW_SECONDS),
        rate_vs_quota=_rate_vs_quota(arrivals, per_minute),
        seconds=seconds,
    )


def _settings(
    exchange: ExchangeStandIn, identity: GraphStandIn, per_minute: int | None
) -> SmtpSettings:
    """SMTP with OAuth 2.0 to the stand-in, outbox's limit at ``per_minute`` (None: none)."""
    return SmtpSettings(
        server=exchange.host,
        port=exchange.port,
        from_mailbox=MAILBOX,
        auth=SmtpAuth.OAUTH2,
        tenant=DEFAULT_TENANT,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
        instance=identity.base_url,
        max_messages_per_minute=per_minute,
    )


def _rate_vs_quota(arrivals: list[float], per_minute: int) -> float:
    """The rate achieved after the first minute's burst, against the quota: the messages
    after the first ``per_minute``, per minute of the time from the first arrival to the
    last. A sender that keeps the window full gets 1.0 (less its margin)."""
    if len(arrivals) <= per_minute or arrivals[-1] <= arrivals[0]:
        return 0.0
    later = len(arrivals) - per_minute
    return later / ((arrivals[-1] - arrivals[0]) / QUOTA_WINDOW_SECONDS) / per_minute


def _wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)
