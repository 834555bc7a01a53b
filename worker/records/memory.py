"""An in-memory ``ClaimStore`` with the claim scripts' rules, for testing the core's decisions.

It keeps records as values in a dict and follows ``CLAIM`` and ``TRANSITION`` step by step
(final records are never claimed, a live claim makes others wait, a scheduled retry is not
run early, a lapsed claim is taken over with a ``lost`` attempt, and fails the delivery once
the attempts are used up that way). The Redis scripts
themselves are tested against a real Redis.
"""

from __future__ import annotations

from dataclasses import replace

from worker.message import OutgoingMessage
from worker.records.claims import Finished
from worker.records.model import (
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
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
    Missing,
    Unreadable,
)

__all__ = ["MemoryClaims"]


class MemoryClaims:
    """Records in a dict; ``settings_version`` plays the settings hash the claim reads."""

    def __init__(
        self, *, lease_seconds: float = 30.0, max_attempts: int = 8, settings_version: int = 1
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.settings_version = settings_version
        self.records: dict[str, DeliveryRecord] = {}
        self._lease_until: dict[str, float] = {}

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

    async def claim(self, delivery_id: str, now: float) -> ClaimResult:
        record = self.records.get(delivery_id)
        if record is None:
            return Missing()
        if record.status.is_final:
            return AlreadyFinal(record.status)
        attempts = record.attempts
        if record.status is DeliveryStatus.SENDING:
            lease_until = self._lease_until.get(delivery_id, 0.0)
            if lease_until > now:
                return Busy(lease_until)
            lost = Attempt(
                number=record.attempt_count,
                started_at=record.updated_at,
                duration_ms=0,
                outcome=AttemptOutcome.LOST,
                error="the worker was lost during this attempt; its claim expired",
            )
            attempts = (*attempts, lost)
            if record.attempts_this_round >= self.max_attempts:
                reason = (
                    f"the worker was lost during attempt {record.attempt_count}, the last of "
                    f"{self.max_attempts} allowed; not tried again"
                )
                self.records[delivery_id] = replace(
                    record,
                    status=DeliveryStatus.FAILED,
                    updated_at=now,
                    last_error=reason,
                    attempts=attempts,
                    recipients=tuple(
                        replace(r, status=RecipientState.FAILED, reply="the worker was lost")
                        if r.status.needs_sending
                        else r
                        for r in record.recipients
                    ),
                )
                return Exhausted(reason)
        if (
            record.status in (DeliveryStatus.RETRYING, DeliveryStatus.WAITING)
            and (record.next_attempt_at or 0) > now + 1
        ):
            return Early(record.next_attempt_at or 0)
        claimed = replace(
            record,
            status=DeliveryStatus.SENDING,
            updated_at=now,
            attempt_count=record.attempt_count + 1,
            attempts=attempts,
        )
        self.records[delivery_id] = claimed
        self._lease_until[delivery_id] = now + self.lease_seconds
        return Claimed(claimed, self.settings_version)

    async def renew(self, record: DeliveryRecord, now: float) -> bool:
        return self._lease(record, now + self.lease_seconds)

    async def release(self, record: DeliveryRecord, now: float) -> None:
        self._lease(record, now)

    def _lease(self, record: DeliveryRecord, lease_until: float) -> bool:
        current = self.records.get(record.id)
        if current is None or current.status is not DeliveryStatus.SENDING:
            return False
        if current.attempt_count != record.attempt_count:
            return False
        self._lease_until[record.id] = lease_until
        return True

    async def wait(
        self, record: DeliveryRecord, *, now: float, until: float, waiting_for: str
    ) -> bool:
        current = self.records.get(record.id)
        if current is None or current.attempt_count != record.attempt_count:
            return False
        self.records[record.id] = replace(
            current,
            status=DeliveryStatus.WAITING,
            updated_at=now,
            attempt_count=current.attempt_count - 1,
            next_attempt_at=until,
            waiting_for=waiting_for,
        )
        self._lease_until.pop(record.id, None)
        return True

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable, now: float) -> None:
        record = self.records.get(delivery_id)
        if record is not None and record.attempt_count == claim.attempt_count:
            self.records[delivery_id] = replace(
                record, status=DeliveryStatus.FAILED, updated_at=now, last_error=claim.reason
            )

    async def finish(
        self,
        record: DeliveryRecord,
        *,
        now: float,
        status: DeliveryStatus,
        attempt: Attempt,
        recipients: tuple[RecipientOutcome, ...],
        last_error: str | None,
        next_attempt_at: float | None,
        claim_next: str | None = None,
        waiting_for: str | None = None,
    ) -> Finished:
        current = self.records.get(record.id)
        # The claim is ours only while attempt_count is still the number we claimed.
        applied = current is not None and current.attempt_count == record.attempt_count
        if current is not None and applied:
            waiting = status is DeliveryStatus.WAITING
            self.records[record.id] = replace(
                current,
                status=status,
                updated_at=now,
                recipients=recipients,
                last_error=last_error,
                next_attempt_at=next_attempt_at,
                attempts=(*current.attempts, attempt),
                retry_base=current.retry_base + 1 if waiting else current.retry_base,
                waiting_for=waiting_for if waiting else None,
            )
            self._lease_until.pop(record.id, None)
        next_claim = None if claim_next is None else await self.claim(claim_next, now)
        return Finished(applied, next_claim)
