"""The worker side of the records: claim a delivery for one attempt, keep the claim alive while
the attempt runs, then record its outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from worker.records.codec import encode_recipients
from worker.records.group_commit import GroupCommit
from worker.records.model import Attempt, DeliveryRecord, DeliveryStatus, RecipientOutcome
from worker.records.scripts import (
    CLAIM,
    RENEW,
    TRANSITION,
    ClaimResult,
    ScriptCall,
    Unreadable,
    claim_call,
    decode_claim,
    decode_transition,
    renew_call,
    transition_call,
)

__all__ = ["ClaimStore", "Finished", "RedisClaims"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish`` did: whether the attempt was recorded (False: the claim was lost to
    another process meanwhile), and the claim of the next delivery when it asked for one."""

    applied: bool
    next_claim: ClaimResult | None = None


class ClaimStore(Protocol):
    """What a ``Deliverer`` needs of the records: ``RedisClaims``, or ``MemoryClaims`` in tests."""

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts unless renewed."""

    async def claim(self, delivery_id: str, now: float) -> ClaimResult:
        """Claim one delivery for one attempt, with the current settings version."""

    async def renew(self, record: DeliveryRecord, now: float) -> bool:
        """Extend the claim by a lease; False when it was lost meanwhile."""

    async def release(self, record: DeliveryRecord, now: float) -> None:
        """Give the claim up at once (the attempt was abandoned): another worker takes over."""

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable, now: float) -> None:
        """Fail a claimed delivery whose record cannot be decoded."""

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
        """Record the attempt and, when ``claim_next`` is given, claim that delivery right
        after (its turn comes as this one ends), in the same round trip. An attempt that
        ends ``waiting`` (the provider's quota; ``waiting_for`` says so) does not count
        against the attempt limit."""

    async def wait(
        self, record: DeliveryRecord, *, now: float, until: float, waiting_for: str
    ) -> bool:
        """Give the claim back without an attempt: the delivery waits until ``until`` (the
        account's sending limit or pause); False when the claim was lost meanwhile."""


class RedisClaims:
    """Claims and attempt outcomes in Redis, each one script call: an outcome and the next
    claim go in one pipeline, with those of the process's other deliveries made meanwhile."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        settings_key: str,
        lease_seconds: float,
        max_attempts: int,
        retention_seconds: int,
    ) -> None:
        self._pipelines = GroupCommit(client)
        self._settings_key = settings_key
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._retention_seconds = retention_seconds
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._transition = client.register_script(TRANSITION)

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    async def claim(self, delivery_id: str, now: float) -> ClaimResult:
        [claimed] = await self._pipelines.run([(self._claim, self._claim_call(delivery_id, now))])
        return decode_claim(delivery_id, _raised(claimed))

    def _claim_call(self, delivery_id: str, now: float) -> ScriptCall:
        return claim_call(
            delivery_id,
            now=now,
            lease_seconds=self._lease_seconds,
            settings_key=self._settings_key,
            max_attempts=self._max_attempts,
            retention_seconds=self._retention_seconds,
        )

    async def renew(self, record: DeliveryRecord, now: float) -> bool:
        return await self._lease_until(record, now + self._lease_seconds)

    async def release(self, record: DeliveryRecord, now: float) -> None:
        await self._lease_until(record, now)

    async def _lease_until(self, record: DeliveryRecord, lease_until: float) -> bool:
        call = renew_call(record.id, attempt_count=record.attempt_count, lease_until=lease_until)
        return bool(await self._renew(keys=call.keys, args=call.args))

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable, now: float) -> None:
        await self._run_transition(
            transition_call(
                delivery_id,
                now=now,
                guard=("attempt_count", str(claim.attempt_count)),
                status=DeliveryStatus.FAILED,
                expire_seconds=self._retention_seconds,
                due_at=None,
                fields={"last_error": claim.reason, "lease_until": "0"},
            )
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
        transition = transition_call(
            record.id,
            now=now,
            # The claim is ours only while attempt_count is still the number we claimed.
            guard=("attempt_count", str(record.attempt_count)),
            status=status,
            expire_seconds=self._retention_seconds if status.is_final else 0,
            # A retry is due then: the sweeper publishes it.
            due_at=next_attempt_at,
            attempt=attempt,
            fields={
                "recipients": encode_recipients(recipients),
                "last_error": last_error or "",
                "next_attempt_at": repr(next_attempt_at) if next_attempt_at else "",
                "lease_until": "0",
                **_waiting_fields(record, status, waiting_for),
            },
        )
        if claim_next is None:
            [recorded] = await self._pipelines.run([(self._transition, transition)])
            return Finished(decode_transition(_raised(recorded)))
        recorded, claimed = await self._pipelines.run(
            [(self._transition, transition), (self._claim, self._claim_call(claim_next, now))]
        )
        applied = decode_transition(_raised(recorded))
        if isinstance(claimed, ResponseError):
            # The outcome is recorded; only the claim failed. Recording it again would add
            # the attempt twice: the next delivery is claimed on its own instead.
            log.warning("delivery %s: claim failed (%s); claiming it again", claim_next, claimed)
            return Finished(applied)
        return Finished(applied, decode_claim(claim_next, claimed))

    async def wait(
        self, record: DeliveryRecord, *, now: float, until: float, waiting_for: str
    ) -> bool:
        call = transition_call(
            record.id,
            now=now,
            guard=("attempt_count", str(record.attempt_count)),
            status=DeliveryStatus.WAITING,
            expire_seconds=0,
            due_at=until,
            fields={
                # Not an attempt: the next claim takes the same number again.
                "attempt_count": str(record.attempt_count - 1),
                "waiting_for": waiting_for,
                "next_attempt_at": repr(until),
                "lease_until": "0",
            },
        )
        [recorded] = await self._pipelines.run([(self._transition, call)])
        return decode_transition(_raised(recorded))

    async def _run_transition(self, call: ScriptCall) -> bool:
        return decode_transition(await self._transition(keys=call.keys, args=call.args))


def _waiting_fields(
    record: DeliveryRecord, status: DeliveryStatus, waiting_for: str | None
) -> dict[str, str]:
    """An attempt the provider's quota stopped waits without using up an attempt: the retry
    budget counts from one later. Any other outcome clears what it waited for."""
    if status is DeliveryStatus.WAITING:
        return {"retry_base": str(record.retry_base + 1), "waiting_for": waiting_for or ""}
    return {"waiting_for": ""} if record.waiting_for else {}


def _raised(reply: Any) -> Any:
    """A script's reply, or its error raised."""
    if isinstance(reply, ResponseError):
        raise reply
    return reply
