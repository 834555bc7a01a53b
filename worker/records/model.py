"""What a delivery record holds: its status, recipients and attempts, as frozen values."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from worker.message import OutgoingMessage

__all__ = [
    "CANCELLABLE_STATUSES",
    "FINAL_STATUSES",
    "RETRYABLE_STATUSES",
    "Attempt",
    "AttemptOutcome",
    "DeliveryRecord",
    "DeliveryStatus",
    "Outcome",
    "Priority",
    "RecipientOutcome",
    "RecipientState",
    "record_summary",
]


class Priority(StrEnum):
    """Which queue a delivery waits in: workers take every waiting high one before normal
    ones, and normal ones before low ones."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class DeliveryStatus(StrEnum):
    """Where a delivery stands; the state machine is drawn in ``worker.records``."""

    SCHEDULED = "scheduled"  # stored with a send time: published once that time comes
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    WAITING = "waiting"  # for the account's sending limit or a provider's pause: not a failure
    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # withdrawn by its producer or an operator before it was sent
    CAPTURED = "captured"  # kept, not sent: the delivery mode was ``capture`` (staging)

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        DeliveryStatus.SENT,
        DeliveryStatus.PARTIALLY_SENT,
        DeliveryStatus.FAILED,
        DeliveryStatus.CANCELLED,
        DeliveryStatus.CAPTURED,
    }
)
# A producer or an operator may cancel a delivery in these: nothing of it is being sent.
CANCELLABLE_STATUSES = frozenset(
    {
        DeliveryStatus.SCHEDULED,
        DeliveryStatus.QUEUED,
        DeliveryStatus.RETRYING,
        DeliveryStatus.WAITING,
    }
)
# An operator's retry starts from these: a final status with recipients still to reach.
RETRYABLE_STATUSES = frozenset({DeliveryStatus.FAILED, DeliveryStatus.PARTIALLY_SENT})


class RecipientState(StrEnum):
    PENDING = "pending"  # not tried yet
    DEFERRED = "deferred"  # refused for now (4xx); tried again with the next attempt
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its delivery was cancelled before this recipient was reached
    CAPTURED = "captured"  # kept by the ``capture`` delivery mode, never sent

    @property
    def needs_sending(self) -> bool:
        return self in (RecipientState.PENDING, RecipientState.DEFERRED)


class AttemptOutcome(StrEnum):
    """How one attempt ended, as recorded in its ``Attempt``."""

    SENT = "sent"  # every pending recipient accepted
    PARTIALLY_SENT = "partially_sent"  # some refused for good, none left to try
    FAILED = "failed"  # every recipient refused for good, no error for the whole message
    DEFERRED = "deferred"  # some recipients refused for now: tried again later
    TRANSIENT = "transient"  # the whole message failed for now (TransientError)
    PERMANENT = "permanent"  # the whole message refused for good (PermanentError)
    CONFIGURATION = "configuration"  # the settings are wrong or missing (ConfigurationError)
    THROTTLED = "throttled"  # the provider's quota: the account paused; not counted
    CAPTURED = "captured"  # kept, not sent: the delivery mode was ``capture``
    LOST = "lost"  # the worker holding the claim died; written by the claim script


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    address: str
    status: RecipientState
    code: int | None = None
    reply: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at sending, as recorded: when, how long, and what the server said."""

    number: int
    started_at: float
    duration_ms: float
    outcome: AttemptOutcome
    code: int | None = None
    reply: str | None = None
    error: str | None = None
    # The reply's enhanced status code (RFC 3463), e.g. "5.2.0"; None when it had none.
    enhanced_code: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an attempt ends in, as the record store writes it: the delivery's new status, the
    attempt's row, every recipient's state, and when it is tried next (``retry_in`` seconds
    from now; None: not again). An outcome that ends ``waiting`` (the provider's quota;
    ``waiting_for`` says so) does not count against the attempt limit. The staging delivery
    modes' facts go with it: the ``captured_message`` (MIME) kept, the addresses it was
    ``redirected_to``."""

    status: DeliveryStatus
    attempt: Attempt
    recipients: tuple[RecipientOutcome, ...]
    retry_in: float | None = None
    waiting_for: str | None = None
    captured_message: bytes | None = None
    redirected_to: tuple[str, ...] = ()

    @property
    def last_error(self) -> str | None:
        """What the record shows as its last error: the attempt's."""
        return self.attempt.error


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    status: DeliveryStatus
    message: OutgoingMessage
    created_at: float
    updated_at: float
    attempt_count: int
    recipients: tuple[RecipientOutcome, ...]
    last_error: str | None
    next_attempt_at: float | None
    idempotency_key: str | None
    # attempt_count when an operator last retried it: the retry budget counts from there.
    retry_base: int = 0
    attempts: tuple[Attempt, ...] = ()
    priority: Priority = Priority.NORMAL
    # While waiting: for what ("the sending limit, 30 per minute"); until next_attempt_at.
    waiting_for: str | None = None
    # The name of the API key that created it; None when the CLI or Python code did.
    created_by: str | None = None
    # When its producer asked it to go out (unix time); None: at once.
    send_at: float | None = None
    # Where it went instead of its recipients (the ``redirect`` delivery mode); () if not.
    redirected_to: tuple[str, ...] = ()

    @property
    def attempts_this_round(self) -> int:
        return self.attempt_count - self.retry_base


def record_summary(record: DeliveryRecord) -> dict[str, Any]:
    """The record as operators read it (``outbox status --json``); no secrets exist in it."""
    return {
        "id": record.id,
        "status": record.status.value,
        "subject": record.message.subject,
        "message_id": record.message.message_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "attempt_count": record.attempt_count,
        "next_attempt_at": record.next_attempt_at,
        "last_error": record.last_error,
        "idempotency_key": record.idempotency_key,
        "created_by": record.created_by,
        "priority": record.priority.value,
        "send_at": record.send_at,
        "waiting_for": record.waiting_for,
        "redirected_to": list(record.redirected_to),
        "recipients": [asdict(r) for r in record.recipients],
        "attempts": [asdict(a) for a in record.attempts],
    }
