"""What an attempt's facts mean for its delivery: done, retry, wait or fail (pure).

The ``Deliverer`` gathers what happened in an attempt (who was pending, what the transport
answered or raised, whether the provider paused the account) as ``AttemptFacts``;
``decide`` turns them into the ``Outcome`` the record store writes. Nothing here does I/O,
so the rules are tested by table (tests/test_decision.py), as ``classify`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from config.errors import ConfigurationError, DeliveryError, PermanentError, TransientError
from worker.backoff import RetryPolicy
from worker.classify import enhanced_status
from worker.records.model import (
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    Outcome,
    RecipientOutcome,
    RecipientState,
)
from worker.transports.base import SendResult

__all__ = ["AttemptFacts", "Wait", "decide"]


@dataclass(frozen=True, slots=True)
class Wait:
    """A delivery may not go for ``seconds``, because of ``waiting_for`` (a pause, a limit)."""

    seconds: float
    waiting_for: str


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What happened in one attempt of ``record``, nothing decided yet.

    ``pending`` are the recipients the attempt was for; ``result`` is what the transport
    answered, ``error`` what it (or the attempt before it) raised; ``pause`` is the
    provider's pause the attempt met; ``redirect_to`` the settings' redirect addresses.
    ``started`` and ``ended`` are by the deliverer's clock (epoch seconds).
    """

    record: DeliveryRecord
    pending: Sequence[str]
    started: float
    ended: float
    result: SendResult | None = None
    error: DeliveryError | None = None
    pause: Wait | None = None
    redirect_to: tuple[str, ...] = ()


def decide(facts: AttemptFacts, policy: RetryPolicy) -> Outcome:
    """The outcome of an attempt: every recipient's state, the delivery's status, the
    attempt's row, and when it is tried again."""
    recipients = _merge(facts)
    retry_in: float | None = None
    waiting = False
    if any(r.status.needs_sending for r in recipients):
        attempts = facts.record.attempts_this_round
        if facts.pause is not None:
            # Not the e-mail's fault: it waits out the pause, the attempt not counted.
            retry_in, waiting = facts.pause.seconds, True
        elif policy.allows_another_attempt(attempts):
            error = facts.error
            retry_after = error.retry_after if isinstance(error, TransientError) else None
            retry_in = policy.delay(attempts, retry_after)
        else:
            recipients = _given_up(recipients)
    status = (
        DeliveryStatus.WAITING
        if waiting
        else _status_for(recipients, retrying=retry_in is not None)
    )
    return Outcome(
        status=status,
        attempt=_attempt_row(facts, status, recipients),
        recipients=recipients,
        retry_in=retry_in,
        waiting_for=facts.pause.waiting_for if facts.pause is not None and waiting else None,
        captured_message=facts.result.captured if facts.result is not None else None,
        # Only an attempt that reached the send: where it went, or would have gone.
        redirected_to=(
            facts.redirect_to if facts.result is not None or facts.error is not None else ()
        ),
    )


def _merge(facts: AttemptFacts) -> tuple[RecipientOutcome, ...]:
    """Every recipient's state after the attempt: the transport's answer per recipient, or
    the error's verdict for each one that was pending."""
    outcomes = {r.address: r for r in facts.record.recipients}
    if facts.result is not None:
        outcomes.update((o.address, o) for o in facts.result.recipients)
    elif facts.error is not None:
        error = facts.error
        state = (
            RecipientState.DEFERRED if isinstance(error, TransientError) else RecipientState.FAILED
        )
        outcomes.update(
            (address, RecipientOutcome(address, state, error.code, error.reply))
            for address in facts.pending
        )
    return tuple(outcomes[r.address] for r in facts.record.recipients)


def _given_up(recipients: tuple[RecipientOutcome, ...]) -> tuple[RecipientOutcome, ...]:
    """The attempts are spent: every recipient still to be sent to fails."""
    return tuple(
        replace(r, status=RecipientState.FAILED) if r.status.needs_sending else r
        for r in recipients
    )


def _status_for(recipients: tuple[RecipientOutcome, ...], *, retrying: bool) -> DeliveryStatus:
    if retrying:
        return DeliveryStatus.RETRYING
    sent = sum(r.status is RecipientState.SENT for r in recipients)
    captured = sum(r.status is RecipientState.CAPTURED for r in recipients)
    if sent + captured == len(recipients):
        # Captured once any were (the mode changed between attempts): its message is kept.
        return DeliveryStatus.CAPTURED if captured else DeliveryStatus.SENT
    return DeliveryStatus.PARTIALLY_SENT if sent + captured else DeliveryStatus.FAILED


def _attempt_row(
    facts: AttemptFacts, status: DeliveryStatus, recipients: tuple[RecipientOutcome, ...]
) -> Attempt:
    """The attempt as the record lists it: what the server (or the error) said."""
    error, result = facts.error, facts.result
    reply = error.reply if error else (result.reply if result else None)
    waiting = status is DeliveryStatus.WAITING
    return Attempt(
        number=facts.record.attempt_count,
        started_at=facts.started,
        duration_ms=round((facts.ended - facts.started) * 1000, 3),
        outcome=AttemptOutcome.THROTTLED if waiting else _attempt_outcome(status, error),
        code=error.code if error else (result.code if result else None),
        reply=reply,
        error=error.reason if error else _refusals(recipients),
        enhanced_code=enhanced_status(reply),
    )


def _attempt_outcome(status: DeliveryStatus, error: DeliveryError | None) -> AttemptOutcome:
    match error:
        case TransientError():
            return AttemptOutcome.TRANSIENT
        case ConfigurationError():
            return AttemptOutcome.CONFIGURATION
        case PermanentError():
            return AttemptOutcome.PERMANENT
    if status is DeliveryStatus.RETRYING:
        return AttemptOutcome.DEFERRED
    return AttemptOutcome(status.value)


def _refusals(recipients: tuple[RecipientOutcome, ...]) -> str | None:
    refused = [
        r for r in recipients if r.status not in (RecipientState.SENT, RecipientState.CAPTURED)
    ]
    if not refused:
        return None
    details = "; ".join(f"{r.address}: {r.code} {r.reply}" for r in refused)
    return f"{len(refused)} of {len(recipients)} recipients not accepted ({details})"
