"""The delivery core's decision, row by row: what an attempt's facts make of its delivery."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from config.errors import ConfigurationError, DeliveryError, PermanentError, TransientError
from worker.backoff import RetryPolicy
from worker.decision import AttemptFacts, Wait, decide
from worker.message import OutgoingMessage
from worker.records import (
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    RecipientOutcome,
    RecipientState,
)
from worker.transports.base import SendResult

TO = ("a@example.com", "b@example.com")
POLICY = RetryPolicy(base_seconds=10, max_seconds=60, max_attempts=3, random=lambda: 0.5)
PENDING = RecipientState.PENDING
SENT, FAILED = RecipientState.SENT, RecipientState.FAILED
DEFERRED, CAPTURED = RecipientState.DEFERRED, RecipientState.CAPTURED


def record(attempt_count: int = 1, *, earlier: tuple[RecipientState, ...] = ()) -> DeliveryRecord:
    """A delivery to ``TO`` on its ``attempt_count``-th attempt; ``earlier``: the recipients'
    states before it (all pending by default)."""
    states = earlier or (PENDING,) * len(TO)
    return DeliveryRecord(
        id="d1",
        status=DeliveryStatus.SENDING,
        message=OutgoingMessage(message_id="<m@x>", to=TO, subject="Hi", text="hello"),
        created_at=1000.0,
        updated_at=1000.0,
        attempt_count=attempt_count,
        recipients=tuple(RecipientOutcome(a, s) for a, s in zip(TO, states, strict=True)),
        last_error=None,
        next_attempt_at=None,
        idempotency_key=None,
    )


def answered(*codes: int, captured: bytes | None = None) -> SendResult:
    """The transport's answer: one SMTP code per recipient of ``TO``."""
    states = {250: CAPTURED if captured else SENT, 451: DEFERRED, 550: FAILED}
    return SendResult(
        tuple(
            RecipientOutcome(a, states[c], c, "OK" if c == 250 else "no")
            for a, c in zip(TO, codes, strict=True)
        ),
        code=250,
        reply="250 OK",
        captured=captured,
    )


@dataclass(frozen=True)
class Row:
    """One rule: the facts, and what the decision must make of them."""

    name: str
    status: DeliveryStatus
    recipients: tuple[RecipientState, ...]
    outcome: AttemptOutcome
    retry_in: float | None = None
    attempt_count: int = 1
    earlier: tuple[RecipientState, ...] = ()
    result: SendResult | None = None
    error: DeliveryError | None = None
    pause: Wait | None = None
    redirect_to: tuple[str, ...] = field(default=())


ROWS = [
    Row("all accepted", DeliveryStatus.SENT, (SENT, SENT), AttemptOutcome.SENT,
        result=answered(250, 250)),
    Row("all refused for good", DeliveryStatus.FAILED, (FAILED, FAILED), AttemptOutcome.FAILED,
        result=answered(550, 550)),
    Row("one refused for good", DeliveryStatus.PARTIALLY_SENT, (SENT, FAILED),
        AttemptOutcome.PARTIALLY_SENT, result=answered(250, 550)),
    # Backoff: the first retry waits half (the jitter) of base_seconds.
    Row("one deferred: retried", DeliveryStatus.RETRYING, (SENT, DEFERRED),
        AttemptOutcome.DEFERRED, retry_in=5.0, result=answered(250, 451)),
    Row("a transient error: every pending one retried", DeliveryStatus.RETRYING,
        (DEFERRED, DEFERRED), AttemptOutcome.TRANSIENT, retry_in=5.0,
        error=TransientError("421 busy", code=421, reply="busy")),
    Row("a Retry-After beyond the backoff is honoured", DeliveryStatus.RETRYING,
        (DEFERRED, DEFERRED), AttemptOutcome.TRANSIENT, retry_in=120.0,
        error=TransientError("429", code=429, reply="slow down", retry_after=120.0)),
    Row("the last attempt: the deferred one fails", DeliveryStatus.PARTIALLY_SENT,
        (SENT, FAILED), AttemptOutcome.PARTIALLY_SENT, attempt_count=3,
        result=answered(250, 451)),
    Row("the last attempt of a transient error", DeliveryStatus.FAILED, (FAILED, FAILED),
        AttemptOutcome.TRANSIENT, attempt_count=3, error=TransientError("timed out")),
    Row("a permanent error fails every pending one", DeliveryStatus.FAILED, (FAILED, FAILED),
        AttemptOutcome.PERMANENT, error=PermanentError("554 no", code=554, reply="no")),
    Row("settings to fix: the pending ones fail now", DeliveryStatus.FAILED, (FAILED, FAILED),
        AttemptOutcome.CONFIGURATION, error=ConfigurationError("535 bad password")),
    Row("earlier recipients keep their state", DeliveryStatus.PARTIALLY_SENT, (SENT, FAILED),
        AttemptOutcome.PERMANENT, earlier=(SENT, DEFERRED), attempt_count=2,
        error=PermanentError("550 gone")),
    Row("the provider's pause: waits, not counted", DeliveryStatus.WAITING, (SENT, DEFERRED),
        AttemptOutcome.THROTTLED, retry_in=300.0, attempt_count=3, result=answered(250, 451),
        pause=Wait(300.0, "the provider's pause of 4.7.0")),
    Row("captured (staging)", DeliveryStatus.CAPTURED, (CAPTURED, CAPTURED),
        AttemptOutcome.CAPTURED, result=answered(250, 250, captured=b"MIME")),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_an_attempts_facts_decide_its_outcome(row: Row) -> None:
    facts = AttemptFacts(
        record(row.attempt_count, earlier=row.earlier),
        pending=[a for a, s in zip(TO, row.earlier or (PENDING,) * 2, strict=True) if s != SENT],
        started=1000.0,
        ended=1000.25,
        result=row.result,
        error=row.error,
        pause=row.pause,
    )
    outcome = decide(facts, POLICY)
    assert outcome.status is row.status
    assert tuple(r.status for r in outcome.recipients) == row.recipients
    assert outcome.attempt.outcome is row.outcome
    assert outcome.retry_in == row.retry_in
    assert outcome.attempt.number == row.attempt_count
    assert outcome.attempt.duration_ms == 250.0


def test_the_attempt_row_says_what_the_server_said() -> None:
    error = TransientError("421 4.7.0 try later", code=421, reply="4.7.0 try later")
    outcome = decide(AttemptFacts(record(), TO, 1.0, 2.0, error=error), POLICY)
    assert (outcome.attempt.code, outcome.attempt.reply) == (421, "4.7.0 try later")
    assert outcome.attempt.enhanced_code == "4.7.0"
    assert outcome.last_error == "421 4.7.0 try later"


def test_refused_recipients_are_the_last_error_of_an_answered_attempt() -> None:
    outcome = decide(AttemptFacts(record(), TO, 1.0, 2.0, result=answered(250, 550)), POLICY)
    assert outcome.last_error == "1 of 2 recipients not accepted (b@example.com: 550 no)"
    assert (
        decide(AttemptFacts(record(), TO, 1.0, 2.0, result=answered(250, 250)), POLICY).last_error
        is None
    )


def test_a_pause_names_what_the_delivery_waits_for() -> None:
    pause = Wait(60.0, "the provider's pause of 4.7.0")
    waiting = decide(
        AttemptFacts(record(), TO, 1.0, 2.0, result=answered(451, 451), pause=pause), POLICY
    )
    assert waiting.waiting_for == "the provider's pause of 4.7.0"
    # A pause met after every recipient was reached changes nothing: the e-mail is sent.
    sent = decide(
        AttemptFacts(record(), TO, 1.0, 2.0, result=answered(250, 250), pause=pause), POLICY
    )
    assert (sent.status, sent.waiting_for, sent.retry_in) == (DeliveryStatus.SENT, None, None)


def test_redirect_addresses_are_recorded_only_when_the_attempt_reached_the_send() -> None:
    redirect = ("qa@example.com",)
    reached = decide(
        AttemptFacts(record(), TO, 1.0, 2.0, result=answered(250, 250), redirect_to=redirect),
        POLICY,
    )
    assert reached.redirected_to == redirect
    waited = decide(
        AttemptFacts(record(), TO, 1.0, 2.0, pause=Wait(5.0, "limit"), redirect_to=redirect),
        POLICY,
    )
    assert waited.redirected_to == ()
