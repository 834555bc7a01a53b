"""An in-memory ``ClaimStore`` with the claim scripts' rules, for testing the core's decisions.

It keeps records as values in a dict and follows ``CLAIM``, ``RENEW`` and ``TRANSITION`` step
by step: final records are never claimed, a live claim makes others wait, a scheduled retry
is not run early, a lapsed claim is taken over (with a ``lost`` attempt) only by a claim that
asks to, and the delivery fails once the attempts are used up that way; each claim has its
token, and only the claim holding it renews or records. Its ``clock`` plays Redis' clock:
the only one leases and due times are read by. The Redis scripts themselves are tested
against a real Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from worker.message import OutgoingMessage
from worker.records.claims import ClaimTicket, Finished
from worker.records.model import (
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    Outcome,
    RecipientOutcome,
    RecipientState,
)
from worker.records.scripts import (
    AlreadyFinal,
    Busy,
    Claimed,
    ClaimResult,
    Early,
    Exhausted,
    Lapsed,
    Missing,
    Unreadable,
)

__all__ = ["MemoryClaims"]


@dataclass(slots=True)
class _Hold:
    """The claim a record holds: its token (kept once the claim has ended, as the record's
    ``claim_token`` is) and its lease."""

    token: str
    lease_until: float


class _Guard(Enum):
    APPLY = "apply"  # the record is sending under this claim
    DONE = "done"  # this claim's transition was made before
    LOST = "lost"  # another claim holds the record, or none does


class MemoryClaims:
    """Records in a dict; ``settings_version`` plays the settings hash the claim reads."""

    def __init__(
        self,
        *,
        lease_seconds: float = 30.0,
        max_attempts: int = 8,
        settings_version: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.settings_version = settings_version
        self.clock = clock
        self.records: dict[str, DeliveryRecord] = {}
        # The captured MIME messages, by delivery id: kept beside the records, as in Redis.
        self.captured: dict[str, bytes] = {}
        self._holds: dict[str, _Hold] = {}

    def add(self, delivery_id: str, message: OutgoingMessage, *, now: float = 0.0) -> None:
        """A queued record, as the producer stores it."""
        self.records[delivery_id] = DeliveryRecord(
            id=delivery_id,
            status=DeliveryStatus.QUEUED,
            message=message,
            created_at=now,
            updated_at=now,
            attempt_count=0,
            recipients=tuple(
                RecipientOutcome(a, RecipientState.PENDING) for a in message.recipients
            ),
            last_error=None,
            next_attempt_at=None,
            idempotency_key=None,
        )

    async def claim(self, ticket: ClaimTicket, *, take_over: bool = False) -> ClaimResult:
        now = self.clock()
        record = self.records.get(ticket.delivery_id)
        if record is None:
            return Missing()
        if record.status.is_final:
            return AlreadyFinal(record.status)
        hold = self._holds.get(record.id)
        if record.status is DeliveryStatus.SENDING:
            if hold is not None and hold.token == ticket.token:
                return Claimed(record, self.settings_version, ticket.token)
            if hold is not None and hold.lease_until > now:
                return Busy(hold.lease_until)
            last = record.attempts_this_round >= self.max_attempts
            if not last and not take_over:
                return Lapsed()
            record = replace(record, attempts=(*record.attempts, _lost(record)))
            if last:
                return self._exhaust(record, now)
        if (
            record.status in (DeliveryStatus.RETRYING, DeliveryStatus.WAITING)
            and (record.next_attempt_at or 0) > now + 1
        ) or (record.status is DeliveryStatus.SCHEDULED and (record.send_at or 0) > now):
            return Early(record.next_attempt_at or record.send_at or 0)
        claimed = replace(
            record,
            status=DeliveryStatus.SENDING,
            updated_at=now,
            attempt_count=record.attempt_count + 1,
        )
        self.records[record.id] = claimed
        self._holds[record.id] = _Hold(ticket.token, now + self.lease_seconds)
        return Claimed(claimed, self.settings_version, ticket.token)

    def _exhaust(self, record: DeliveryRecord, now: float) -> Exhausted:
        reason = (
            f"the worker was lost during attempt {record.attempt_count}, the last of "
            f"{self.max_attempts} allowed; not tried again"
        )
        self.records[record.id] = replace(
            record,
            status=DeliveryStatus.FAILED,
            updated_at=now,
            last_error=reason,
            recipients=tuple(
                replace(r, status=RecipientState.FAILED, reply="the worker was lost")
                if r.status.needs_sending
                else r
                for r in record.recipients
            ),
        )
        self._holds.pop(record.id, None)
        return Exhausted(reason)

    async def renew(self, claim: Claimed) -> bool:
        return self._lease_for(claim, self.lease_seconds)

    async def release(self, claim: Claimed) -> None:
        self._lease_for(claim, 0.0)

    def _lease_for(self, claim: Claimed, seconds: float) -> bool:
        if self._guard(claim.record.id, claim.token) is not _Guard.APPLY:
            return False
        self._holds[claim.record.id].lease_until = self.clock() + seconds
        return True

    def _guard(self, delivery_id: str, token: str) -> _Guard:
        record, hold = self.records.get(delivery_id), self._holds.get(delivery_id)
        if record is None or hold is None or hold.token != token:
            return _Guard.LOST
        return _Guard.APPLY if record.status is DeliveryStatus.SENDING else _Guard.DONE

    def _ended(self, delivery_id: str, record: DeliveryRecord) -> None:
        self.records[delivery_id] = record
        self._holds[delivery_id].lease_until = 0.0

    async def wait(self, claim: Claimed, *, seconds: float, waiting_for: str) -> bool:
        guard = self._guard(claim.record.id, claim.token)
        if guard is _Guard.APPLY:
            now = self.clock()
            current = self.records[claim.record.id]
            self._ended(
                claim.record.id,
                replace(
                    current,
                    status=DeliveryStatus.WAITING,
                    updated_at=now,
                    attempt_count=current.attempt_count - 1,
                    next_attempt_at=now + seconds,
                    waiting_for=waiting_for,
                ),
            )
        return guard is not _Guard.LOST

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable) -> None:
        if self._guard(delivery_id, claim.token) is _Guard.APPLY:
            record = self.records[delivery_id]
            self._ended(
                delivery_id,
                replace(
                    record,
                    status=DeliveryStatus.FAILED,
                    updated_at=self.clock(),
                    last_error=claim.reason,
                ),
            )

    async def finish(
        self,
        claim: Claimed,
        outcome: Outcome,
        *,
        claim_next: ClaimTicket | None = None,
    ) -> Finished:
        guard = self._guard(claim.record.id, claim.token)
        if guard is _Guard.APPLY:
            now = self.clock()
            current = self.records[claim.record.id]
            waiting = outcome.status is DeliveryStatus.WAITING
            retry_in = outcome.retry_in
            self._ended(
                claim.record.id,
                replace(
                    current,
                    status=outcome.status,
                    updated_at=now,
                    recipients=outcome.recipients,
                    last_error=outcome.last_error,
                    next_attempt_at=now + retry_in if retry_in is not None else None,
                    attempts=(*current.attempts, outcome.attempt),
                    retry_base=current.retry_base + 1 if waiting else current.retry_base,
                    waiting_for=outcome.waiting_for if waiting else None,
                    redirected_to=outcome.redirected_to or current.redirected_to,
                ),
            )
            if outcome.captured_message is not None:
                self.captured[claim.record.id] = outcome.captured_message
        next_claim = None if claim_next is None else await self.claim(claim_next)
        return Finished(guard is not _Guard.LOST, next_claim)


def _lost(record: DeliveryRecord) -> Attempt:
    """The attempt of a holder that died: recorded by the claim that takes over."""
    return Attempt(
        number=record.attempt_count,
        started_at=record.updated_at,
        duration_ms=0,
        outcome=AttemptOutcome.LOST,
        error="the worker was lost during this attempt; its claim expired",
    )
