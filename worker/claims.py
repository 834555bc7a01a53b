"""The worker side of the records: claim a delivery for one attempt, then record its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from config.settings_store import SETTINGS_KEY
from worker.record_scripts import CLAIM, TRANSITION, transition_arguments
from worker.records import (
    STATUS_INDEX_PREFIX,
    Attempt,
    DeliveryRecord,
    DeliveryStatus,
    RecipientOutcome,
    attempts_key,
    decode_record,
    encode_attempt,
    encode_recipients,
    record_key,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """This process now owns the delivery for one attempt (until the lease runs out)."""

    record: DeliveryRecord
    settings_version: int


@dataclass(frozen=True, slots=True)
class AlreadyFinal:
    """Sent, partially sent or failed before: never sent again."""

    status: DeliveryStatus


@dataclass(frozen=True, slots=True)
class Busy:
    """Another process holds the delivery; look again when its lease ends."""

    lease_until: float


@dataclass(frozen=True, slots=True)
class Early:
    """A retry is scheduled for later; this job is a duplicate and must not run it early."""

    due_at: float


@dataclass(frozen=True, slots=True)
class Missing:
    """No such record (expired or purged)."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Claimed, but the record cannot be decoded: it fails instead of blocking its task."""

    attempt_count: int
    reason: str


ClaimResult = Claimed | AlreadyFinal | Busy | Early | Missing | Unreadable


class DeliveryClaims:
    """Claims deliveries one attempt at a time and records each attempt's outcome."""

    def __init__(
        self, client: aioredis.Redis, *, lease_seconds: float, retention_seconds: int
    ) -> None:
        self._lease_seconds = lease_seconds
        self._retention_seconds = retention_seconds
        self._client = client
        self._claim = client.register_script(CLAIM)
        self._transition = client.register_script(TRANSITION)

    async def claim(self, delivery_id: str, now: float) -> ClaimResult:
        """Claim one delivery for one attempt, reading it and the settings version at once."""
        reply = await self._claim(
            keys=[record_key(delivery_id), SETTINGS_KEY, attempts_key(delivery_id)],
            args=[delivery_id, repr(now), repr(self._lease_seconds), STATUS_INDEX_PREFIX],
        )
        return _claim_result(delivery_id, reply)

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable, now: float) -> None:
        await self._transition(
            keys=[record_key(delivery_id), attempts_key(delivery_id)],
            args=transition_arguments(
                delivery_id=delivery_id,
                now=now,
                guard=("attempt_count", str(claim.attempt_count)),
                status=DeliveryStatus.FAILED.value,
                index_prefix=STATUS_INDEX_PREFIX,
                expire_seconds=self._retention_seconds,
                fields={"last_error": claim.reason, "lease_until": "0"},
            ),
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
    ) -> bool:
        """Record the attempt; False if the claim was lost to another process meanwhile."""
        applied = await self._transition(
            keys=[record_key(record.id), attempts_key(record.id)],
            args=transition_arguments(
                delivery_id=record.id,
                now=now,
                # The claim is ours only while attempt_count is still the number we claimed.
                guard=("attempt_count", str(record.attempt_count)),
                status=status.value,
                index_prefix=STATUS_INDEX_PREFIX,
                expire_seconds=self._retention_seconds if status.is_final else 0,
                attempt_json=encode_attempt(attempt),
                fields={
                    "recipients": encode_recipients(recipients),
                    "last_error": last_error or "",
                    "next_attempt_at": repr(next_attempt_at) if next_attempt_at else "",
                    "lease_until": "0",
                },
            ),
        )
        return bool(applied)


def _claim_result(delivery_id: str, reply: list[Any]) -> ClaimResult:
    verdict = reply[0].decode()
    if verdict == "missing":
        return Missing()
    if verdict == "final":
        return AlreadyFinal(DeliveryStatus(reply[1].decode()))
    if verdict == "busy":
        return Busy(float(reply[1]))
    if verdict == "early":
        return Early(float(reply[1]))
    flat = reply[2]
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    try:
        return Claimed(decode_record(delivery_id, fields), settings_version=int(reply[1]))
    except (ValueError, KeyError, TypeError) as exc:
        return Unreadable(
            int(fields.get(b"attempt_count", b"0")),
            f"the stored record cannot be read ({type(exc).__name__}); it was not sent",
        )
