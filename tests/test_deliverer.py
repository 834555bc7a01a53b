"""The Deliverer's decisions, table-tested in memory: no Redis, no server, milliseconds each.

The same decisions against real Redis and real SMTP and Graph peers are tested in
test_smtp_delivery.py and test_graph_delivery.py; here the in-memory claim store (which
follows the claim scripts' rules) and the memory transport let every branch run fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import pytest
import redis
from pydantic import SecretStr

from config.errors import ConfigurationError, PermanentError, QuotaError, TransientError
from config.mail_settings import SmtpSettings
from config.settings_store import StoredSettings
from worker.backoff import RetryPolicy
from worker.deliver import NOT_CONFIGURED, Deliverer, JobOutcome, TransportCache
from worker.message import OutgoingMessage
from worker.records import (
    AttemptOutcome,
    Busy,
    Claimed,
    ClaimResult,
    DeliveryRecord,
    DeliveryStatus,
    MemoryClaims,
    RecipientState,
)
from worker.records.claims import ClaimTicket
from worker.sending_limits import MemoryGate
from worker.transports.base import BeforeData, SendResult, go_ahead
from worker.transports.memory import MemoryTransport, SendHandler

RECIPIENTS = ("a@example.com", "b@example.com")
MAX_ATTEMPTS = 3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class SettingsFields(TypedDict, total=False):
    """The SMTP settings a test gives a version (the others keep their defaults)."""

    max_messages_per_minute: int
    username: str
    password: SecretStr


class SettingsVersions:
    """The settings of each saved version, as the worker's settings cache would return them;
    a read may take ``delay_seconds``, or stall the whole process (the loop) ``stall_seconds``."""

    def __init__(self) -> None:
        self.saved: dict[int, StoredSettings] = {}
        self.delay_seconds = 0.0
        self.stall_seconds = 0.0

    def save(self, version: int, **fields: Unpack[SettingsFields]) -> None:
        settings = SmtpSettings(from_mailbox="robot@example.com", **fields)
        self.saved[version] = StoredSettings(version, settings, saved_at=0.0)

    async def get(self, version: int) -> StoredSettings | None:
        time.sleep(self.stall_seconds)
        await asyncio.sleep(self.delay_seconds)
        return self.saved.get(version)


@dataclass
class Harness:
    """A Deliverer wired to memory: records, settings, a transport per settings version."""

    handler: SendHandler
    clock: Clock = field(default_factory=Clock)
    settings: SettingsVersions = field(default_factory=SettingsVersions)
    transports: list[MemoryTransport] = field(default_factory=list)
    # Its clock plays Redis': the harness's, which the test moves on.
    claims: MemoryClaims = field(init=False)
    # Kept across jobs, as a worker process keeps it: it holds the transport of a version.
    cache: TransportCache = field(init=False)
    gate: MemoryGate = field(init=False)

    def __post_init__(self) -> None:
        self.claims = MemoryClaims(lease_seconds=30, max_attempts=MAX_ATTEMPTS, clock=self.clock)
        self.settings.save(1)
        self.cache = TransportCache(self.transport_for)
        self.gate = MemoryGate(clock=self.clock)

    def new_transport(self) -> MemoryTransport:
        return MemoryTransport(self.handler)

    def transport_for(self, stored: StoredSettings) -> MemoryTransport:
        transport = self.new_transport()
        self.transports.append(transport)
        return transport

    def add(self, delivery_id: str = "d1", recipients: Sequence[str] = RECIPIENTS) -> str:
        message = OutgoingMessage(
            message_id=f"<{delivery_id}@test>", to=tuple(recipients), subject="s"
        )
        self.claims.add(delivery_id, message, now=self.clock.now)
        return delivery_id

    def deliverer(self, clock: Callable[[], float] | None = None) -> Deliverer:
        return Deliverer(
            gate=self.gate,
            claims=self.claims,
            settings=self.settings,
            transports=self.cache,
            policy=RetryPolicy(
                base_seconds=10, max_seconds=60, max_attempts=MAX_ATTEMPTS, random=lambda: 0.5
            ),
            in_flight=asyncio.Semaphore(4),
            clock=clock or self.clock,
        )

    def deliver(self, *delivery_ids: str) -> list[JobOutcome]:
        return asyncio.run(self.deliverer().deliver_many(delivery_ids))

    def record(self, delivery_id: str = "d1") -> DeliveryRecord:
        return self.claims.records[delivery_id]

    def states(self, delivery_id: str = "d1") -> dict[str, RecipientState]:
        return {r.address: r.status for r in self.record(delivery_id).recipients}

    def sent_to(self) -> list[str]:
        return [r for t in self.transports for sent in t.sent for r in sent.recipients]


def refusing(codes: Mapping[str, int]) -> SendHandler:
    return lambda message, recipients: {r: c for r, c in codes.items() if r in recipients}


def raising(error: Exception) -> SendHandler:
    def handler(message: OutgoingMessage, recipients: Sequence[str]) -> Mapping[str, int]:
        raise error

    return handler


SENT, DEFERRED, FAILED = RecipientState.SENT, RecipientState.DEFERRED, RecipientState.FAILED


@pytest.mark.parametrize(
    ("handler", "outcome", "attempt", "states", "retry_scheduled"),
    [
        pytest.param(
            refusing({}), JobOutcome.SENT, AttemptOutcome.SENT, (SENT, SENT), False, id="accepted"
        ),
        pytest.param(
            refusing({"b@example.com": 550}),
            JobOutcome.PARTIALLY_SENT,
            AttemptOutcome.PARTIALLY_SENT,
            (SENT, FAILED),
            False,
            id="one refused for good",
        ),
        pytest.param(
            refusing({"a@example.com": 550, "b@example.com": 553}),
            JobOutcome.FAILED,
            AttemptOutcome.FAILED,
            (FAILED, FAILED),
            False,
            id="all refused for good",
        ),
        pytest.param(
            refusing({"b@example.com": 451}),
            JobOutcome.RETRYING,
            AttemptOutcome.DEFERRED,
            (SENT, DEFERRED),
            True,
            id="one refused for now",
        ),
        pytest.param(
            raising(TransientError("451 try later", code=451)),
            JobOutcome.RETRYING,
            AttemptOutcome.TRANSIENT,
            (DEFERRED, DEFERRED),
            True,
            id="transient error",
        ),
        pytest.param(
            raising(PermanentError("554 no", code=554)),
            JobOutcome.FAILED,
            AttemptOutcome.PERMANENT,
            (FAILED, FAILED),
            False,
            id="permanent error",
        ),
        pytest.param(
            raising(ConfigurationError("535 bad login", code=535)),
            JobOutcome.FAILED,
            AttemptOutcome.CONFIGURATION,
            (FAILED, FAILED),
            False,
            id="configuration error: no blind retries",
        ),
        pytest.param(
            raising(RuntimeError("a bug in a library")),
            JobOutcome.FAILED,
            AttemptOutcome.PERMANENT,
            (FAILED, FAILED),
            False,
            id="unexpected exception fails the delivery, not the worker",
        ),
    ],
)
def test_one_attempt_decides(
    handler: SendHandler,
    outcome: JobOutcome,
    attempt: AttemptOutcome,
    states: tuple[RecipientState, RecipientState],
    retry_scheduled: bool,
) -> None:
    harness = Harness(handler)
    delivery_id = harness.add()

    assert harness.deliver(delivery_id) == [outcome]

    record = harness.record()
    assert record.status.value == outcome.value
    assert tuple(harness.states().values()) == states
    [recorded] = record.attempts
    assert (recorded.number, recorded.outcome) == (1, attempt)
    if retry_scheduled:
        # Backoff with full jitter (fixed at half here): up to 10 s after the first attempt.
        assert record.next_attempt_at == harness.clock.now + 5.0
    else:
        assert record.next_attempt_at is None


def test_a_retry_sends_only_to_the_deferred_recipients() -> None:
    harness = Harness(refusing({"b@example.com": 451}))
    harness.add()
    harness.deliver("d1")
    harness.clock.now = harness.record().next_attempt_at or 0
    harness.transports[0].handler = refusing({})

    assert harness.deliver("d1") == [JobOutcome.SENT]
    assert harness.sent_to() == ["a@example.com", "b@example.com"]
    assert [a.outcome for a in harness.record().attempts] == [
        AttemptOutcome.DEFERRED,
        AttemptOutcome.SENT,
    ]


def test_retry_after_from_the_server_is_honoured() -> None:
    harness = Harness(raising(TransientError("throttled", code=429, retry_after=42.0)))
    harness.add()
    harness.deliver("d1")
    assert harness.record().next_attempt_at == harness.clock.now + 42.0


def test_the_attempt_limit_ends_in_failed() -> None:
    harness = Harness(raising(TransientError("connection refused")))
    harness.add()
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcomes += harness.deliver("d1")
        harness.clock.now += 100
    assert outcomes == [JobOutcome.RETRYING] * (MAX_ATTEMPTS - 1) + [JobOutcome.FAILED]
    record = harness.record()
    assert record.attempt_count == MAX_ATTEMPTS
    assert set(harness.states().values()) == {FAILED}
    assert record.last_error == "connection refused"


def test_a_provider_quota_waits_out_the_pause_and_is_never_counted_as_an_attempt() -> None:
    quota = QuotaError("quota", code=554, reply="5.2.0 SubmissionQuotaExceeded", retry_after=30)
    harness = Harness(raising(quota))
    harness.add()
    outcomes = []
    for _ in range(MAX_ATTEMPTS + 1):  # more refusals than the attempt limit allows
        outcomes += harness.deliver("d1")
        harness.clock.now += 31
    assert outcomes == [JobOutcome.WAITING] * (MAX_ATTEMPTS + 1)
    record = harness.record()
    assert record.status is DeliveryStatus.WAITING
    assert record.waiting_for == "the provider's pause of 554 5.2.0 SubmissionQuotaExceeded"
    assert record.last_error == "quota"
    assert [a.outcome for a in record.attempts] == ["throttled"] * (MAX_ATTEMPTS + 1)
    assert record.attempts_this_round == 0
    assert harness.gate.pauses  # the account was paused for every worker
    harness.handler = refusing({})
    harness.transports[0].handler = harness.handler
    assert harness.deliver("d1") == [JobOutcome.SENT]
    assert harness.record().waiting_for is None


def test_the_sending_limit_makes_the_next_one_wait_without_an_attempt() -> None:
    harness = Harness(refusing({}))
    harness.settings.save(1, max_messages_per_minute=1)
    harness.add("d1")
    harness.add("d2")
    assert harness.deliver("d1", "d2") == [JobOutcome.SENT, JobOutcome.WAITING]
    waiting = harness.record("d2")
    assert (waiting.status, waiting.attempt_count, waiting.attempts) == (
        DeliveryStatus.WAITING,
        0,
        (),
    )
    assert waiting.waiting_for == "the sending limit, 1 per minute"
    assert waiting.next_attempt_at == harness.clock.now + 62  # a minute and the margin
    assert harness.deliver("d2") == [JobOutcome.EARLY]
    harness.clock.now += 62
    assert harness.deliver("d2") == [JobOutcome.SENT]
    assert harness.record("d2").attempt_count == 1


def test_a_late_duplicate_job_never_sends_again() -> None:
    harness = Harness(refusing({}))
    harness.add()
    assert harness.deliver("d1") == [JobOutcome.SENT]
    assert harness.deliver("d1") == [JobOutcome.SENT]
    assert harness.transports[0].calls == 1
    assert len(harness.record().attempts) == 1


def test_a_duplicate_job_before_the_scheduled_retry_leaves_it_alone() -> None:
    harness = Harness(raising(TransientError("later")))
    harness.add()
    harness.deliver("d1")
    assert harness.deliver("d1") == [JobOutcome.EARLY]
    assert harness.transports[0].calls == 1


def test_a_delivery_claimed_elsewhere_is_looked_at_again_when_the_lease_ends() -> None:
    harness = Harness(refusing({}))
    harness.add()
    asyncio.run(harness.claims.claim(ClaimTicket("d1")))  # another process holds it

    assert harness.deliver("d1") == [JobOutcome.BUSY]
    assert harness.transports == []
    assert harness.record().attempt_count == 1  # the holder's attempt, nothing more


def test_a_claim_whose_holder_died_is_taken_over_and_its_attempt_recorded_lost() -> None:
    harness = Harness(refusing({}))
    harness.add()
    asyncio.run(harness.claims.claim(ClaimTicket("d1")))
    harness.clock.now += 31

    assert harness.deliver("d1") == [JobOutcome.SENT]
    attempts = harness.record().attempts
    assert [(a.number, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.LOST),
        (2, AttemptOutcome.SENT),
    ]


def test_a_missing_record_is_skipped() -> None:
    harness = Harness(refusing({}))
    assert harness.deliver("gone") == [JobOutcome.MISSING]
    assert harness.transports == []


def test_without_settings_the_delivery_fails_with_a_configuration_reason() -> None:
    harness = Harness(refusing({}))
    harness.settings.saved.clear()
    harness.claims.settings_version = 0
    harness.add()

    assert harness.deliver("d1") == [JobOutcome.FAILED]
    [attempt] = harness.record().attempts
    assert attempt.outcome is AttemptOutcome.CONFIGURATION
    assert attempt.error == NOT_CONFIGURED


def test_a_settings_change_takes_effect_at_the_next_delivery() -> None:
    harness = Harness(refusing({}))
    harness.add("d1")
    harness.add("d2")
    harness.add("d3")
    harness.deliver("d1", "d2")
    assert len(harness.transports) == 1

    harness.settings.save(2)
    harness.claims.settings_version = 2
    harness.deliver("d3")

    first, second = harness.transports
    assert first.closed
    assert not second.closed
    assert [s.message.message_id for s in second.sent] == ["<d3@test>"]


def test_one_failing_delivery_does_not_stop_the_others_of_its_job() -> None:
    harness = Harness(refusing({"bad@example.com": 550}))
    harness.add("good", ["ok@example.com"])
    harness.add("bad", ["bad@example.com"])
    assert harness.deliver("good", "bad") == [JobOutcome.SENT, JobOutcome.FAILED]
    assert harness.record("good").status is DeliveryStatus.SENT


def test_a_message_that_kills_its_worker_every_time_fails_after_the_attempt_limit() -> None:
    harness = Harness(refusing({}))
    harness.add()
    for _ in range(MAX_ATTEMPTS):  # each claim's holder dies mid-attempt (attempted alone)
        asyncio.run(harness.claims.claim(ClaimTicket("d1"), take_over=True))
        harness.clock.now += 31
    assert harness.deliver("d1") == [JobOutcome.FAILED]
    record = harness.record()
    assert record.status is DeliveryStatus.FAILED
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.LOST] * MAX_ATTEMPTS
    assert record.last_error is not None
    assert "worker was lost" in record.last_error
    assert set(harness.states().values()) == {FAILED}
    assert harness.transports == []


class SlowTransport(MemoryTransport):
    """Takes ``seconds`` of real time to send."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        await asyncio.sleep(self.seconds)  # the claim is renewed meanwhile: DATA may go
        return await super().send(message, recipients, date, before_data)


def test_a_long_attempt_keeps_its_claim_and_an_abandoned_one_gives_it_up() -> None:
    harness = Harness(refusing({}))
    harness.claims.lease_seconds = 0.06  # the attempt below lasts five leases
    harness.claims.clock = time.time
    harness.new_transport = lambda: SlowTransport(0.3)  # type: ignore[method-assign]
    harness.add()

    async def run() -> tuple[ClaimResult, ClaimResult]:
        attempt = asyncio.create_task(harness.deliverer(time.time).deliver_many(["d1"]))
        await asyncio.sleep(0.2)
        during = await harness.claims.claim(ClaimTicket("d1"), take_over=True)
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt
        after = await harness.claims.claim(ClaimTicket("d1"), take_over=True)
        return during, after

    during, after = asyncio.run(run())
    assert isinstance(during, Busy)  # renewed all along: never taken over mid-attempt
    # Abandoned: the claim was given up at once; the next claim took over without waiting.
    assert isinstance(after, Claimed)
    assert [a.outcome for a in harness.record().attempts] == [AttemptOutcome.LOST]


class CrowdTransport(MemoryTransport):
    """Notes how many sends were in flight, at most, while each message was being sent."""

    def __init__(self, handler: SendHandler) -> None:
        super().__init__(handler)
        self.in_flight = 0
        self.crowd: dict[str, int] = {}

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        self.in_flight += 1
        try:
            self.crowd[message.message_id] = self.in_flight
            await asyncio.sleep(0.02)
            self.crowd[message.message_id] = max(self.crowd[message.message_id], self.in_flight)
            return await super().send(message, recipients, date, before_data)
        finally:
            self.in_flight -= 1


def test_a_delivery_whose_process_died_mid_attempt_is_sent_alone_after_the_rest() -> None:
    harness = Harness(refusing({}))
    harness.new_transport = lambda: CrowdTransport(harness.handler)  # type: ignore[method-assign]
    job = [harness.add(f"d{n}") for n in range(1, 6)]
    asyncio.run(harness.claims.claim(ClaimTicket("d2")))  # its process died mid-attempt
    harness.clock.now += 31

    assert harness.deliver(*job) == [JobOutcome.SENT] * 5  # in the job's order
    [transport] = harness.transports
    assert isinstance(transport, CrowdTransport)
    assert transport.sent[-1].message.message_id == "<d2@test>"
    # If it kills the process again, it takes no other delivery's attempt with it.
    assert transport.crowd.pop("<d2@test>") == 1
    assert max(transport.crowd.values()) > 1  # the others went side by side
    assert [a.outcome for a in harness.record("d2").attempts] == [
        AttemptOutcome.LOST,
        AttemptOutcome.SENT,
    ]
    assert all(len(harness.record(d).attempts) == 1 for d in job if d != "d2")


def slow_claim_harness() -> Harness:
    """An attempt whose settings take half a lease to read: a renewal comes before the send."""
    harness = Harness(refusing({}))
    harness.claims.lease_seconds = 0.9  # renewed every 0.3 s
    harness.settings.delay_seconds = 0.45
    return harness


def test_an_attempt_that_outlasts_a_renewal_is_sent() -> None:
    harness = slow_claim_harness()
    harness.add()
    assert harness.deliver("d1") == [JobOutcome.SENT]


def test_a_claim_taken_over_before_the_send_is_not_sent() -> None:
    harness = slow_claim_harness()
    harness.add()

    async def run() -> ClaimResult:
        attempt = asyncio.create_task(harness.deliverer().deliver_many(["d1"]))
        await asyncio.sleep(0.1)
        harness.clock.now += 1  # by Redis' clock the lease ran out: another process takes over
        taker = await harness.claims.claim(ClaimTicket("d1"), take_over=True)
        await attempt
        return taker

    taker = asyncio.run(run())
    assert isinstance(taker, Claimed)
    assert harness.sent_to() == []
    record = harness.record()
    assert record.status is DeliveryStatus.SENDING  # the taker's attempt, left to it
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.LOST]


class RedisAwayForRenewals(MemoryClaims):
    """Claims and outcomes go through; every renewal finds Redis unreachable."""

    async def renew(self, claim: Claimed) -> bool:
        raise redis.ConnectionError("Connection refused")


def test_a_renewal_that_fails_stops_the_attempt_before_the_send() -> None:
    harness = slow_claim_harness()
    harness.claims = RedisAwayForRenewals(
        lease_seconds=0.9, max_attempts=MAX_ATTEMPTS, clock=harness.clock
    )
    harness.add()

    assert harness.deliver("d1") == [JobOutcome.RETRYING]
    assert harness.sent_to() == []
    [attempt] = harness.record().attempts
    assert attempt.outcome is AttemptOutcome.TRANSIENT
    assert attempt.error == "not sent: its claim could not be renewed (ConnectionError)"


def test_a_process_stalled_past_its_claim_does_not_send() -> None:
    harness = Harness(refusing({}))
    harness.claims.lease_seconds = 0.9
    harness.settings.stall_seconds = 0.7  # the loop blocked: no renewal could run
    harness.add()

    assert harness.deliver("d1") == [JobOutcome.RETRYING]
    assert harness.sent_to() == []
    [attempt] = harness.record().attempts
    assert attempt.error is not None
    assert attempt.error.startswith("not sent: its claim was last confirmed ")


def test_a_renewal_that_fails_while_the_send_waits_stops_it_before_data() -> None:
    """The send began with the claim surely its own, then waited (for a connection, for the
    server's RCPT replies) while the renewal failed: the message itself never goes."""
    harness = Harness(refusing({}))
    harness.claims = RedisAwayForRenewals(
        lease_seconds=0.9, max_attempts=MAX_ATTEMPTS, clock=harness.clock
    )
    harness.new_transport = lambda: SlowTransport(0.45)  # type: ignore[method-assign]
    harness.add()

    assert harness.deliver("d1") == [JobOutcome.RETRYING]
    assert harness.sent_to() == []
    [attempt] = harness.record().attempts
    assert attempt.error == "not sent: its claim could not be renewed (ConnectionError)"


def test_an_unexpected_error_quoting_the_password_is_recorded_and_logged_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def quoting(message: OutgoingMessage, recipients: Sequence[str]) -> dict[str, int]:
        raise RuntimeError("library bug while sending AUTH with s3cret-Pa55")

    harness = Harness(quoting)
    harness.settings.save(1, username="robot", password=SecretStr("s3cret-Pa55"))
    harness.add()
    with caplog.at_level(logging.DEBUG, logger="worker.deliver"):
        assert harness.deliver("d1") == [JobOutcome.FAILED]
    record = harness.record()
    assert (
        record.last_error
        == "internal error: RuntimeError: library bug while sending AUTH with ********"
    )
    assert "s3cret-Pa55" not in caplog.text
    assert "Traceback (most recent call last)" in caplog.text  # still there to debug with
    assert "unexpected RuntimeError: library bug while sending AUTH with ********" in caplog.text
