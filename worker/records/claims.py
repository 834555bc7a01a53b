"""The worker side of the records: claim a delivery for one attempt, keep the claim alive while
the attempt runs, then record its outcome."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.records.captured import CAPTURED_MESSAGE_FIELD, REDIRECTED_TO_FIELD
from worker.records.codec import encode_recipients
from worker.records.group_commit import GroupCommit, ScriptRun
from worker.records.model import DeliveryStatus, Outcome
from worker.records.scripts import (
    CLAIM,
    RENEW,
    TRANSITION,
    Claimed,
    ClaimResult,
    ScriptCall,
    Unreadable,
    claim_call,
    decode_claim,
    decode_transition,
    renew_call,
    transition_call,
)

__all__ = [
    "LOST_REPLY",
    "ClaimStore",
    "ClaimTicket",
    "Finished",
    "RedisClaims",
    "new_claim_token",
    "rerun_on_lost_reply",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

# The errors after which a command's fate is unknown: Redis may have run it, its reply lost.
LOST_REPLY = (RedisConnectionError, RedisTimeoutError)
# The pauses between the tries of one call whose reply was lost: a blip, not an outage (the
# deliverer waits those out itself, and a job fails over to the sweeper).
_RERUN_PAUSES = (0.05, 0.2, 0.5)


def new_claim_token() -> str:
    """A claim's name: random, so that no other claim (another worker's, a later one of the
    same delivery) has it."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class ClaimTicket:
    """A claim to make: the delivery, and the token it is made (and made again) under."""

    delivery_id: str
    token: str = field(default_factory=new_claim_token)


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish`` did: whether the attempt was recorded (False: the claim was lost to
    another process meanwhile), and the claim of the next delivery when it asked for one."""

    applied: bool
    next_claim: ClaimResult | None = None


async def rerun_on_lost_reply(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, made again (a few times, quickly) while its reply is lost on the way: only
    for calls that answer a second run as they answered the first and change nothing more."""
    for pause in _RERUN_PAUSES:
        try:
            return await call()
        except LOST_REPLY as exc:
            log.warning("a Redis reply was lost (%s); asking again", type(exc).__name__)
            await asyncio.sleep(pause)
    return await call()


class ClaimStore(Protocol):
    """What a ``Deliverer`` needs of the records: ``RedisClaims``, or ``MemoryClaims`` in tests.

    Leases and due times are measured by the store's clock (Redis'), never the caller's.
    """

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts unless renewed."""

    async def claim(self, ticket: ClaimTicket, *, take_over: bool = False) -> ClaimResult:
        """Claim one delivery for one attempt, with the current settings version. A claim
        whose holder died mid-attempt answers ``Lapsed`` unless ``take_over``: the caller
        then attempts that delivery alone."""

    async def renew(self, claim: Claimed) -> bool:
        """Extend the claim by a lease; False when it was lost meanwhile."""

    async def release(self, claim: Claimed) -> None:
        """Give the claim up at once (the attempt was abandoned): another worker takes over."""

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable) -> None:
        """Fail a claimed delivery whose record cannot be decoded."""

    async def finish(
        self,
        claim: Claimed,
        outcome: Outcome,
        *,
        claim_next: ClaimTicket | None = None,
    ) -> Finished:
        """Record the attempt's outcome and, when ``claim_next`` is given, claim that delivery
        right after (its turn comes as this one ends), in the same round trip."""

    async def wait(self, claim: Claimed, *, seconds: float, waiting_for: str) -> bool:
        """Give the claim back without an attempt: the delivery waits ``seconds`` (the
        account's sending limit or pause); False when the claim was lost meanwhile."""


class RedisClaims:
    """Claims and attempt outcomes in Redis, each one script call: an outcome and the next
    claim go in one pipeline, with those of the process's other deliveries made meanwhile.

    Every script here is idempotent (a claim token names each claim), so a call whose reply
    was lost is simply made again, token and all (``rerun_on_lost_reply``).
    """

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

    async def claim(self, ticket: ClaimTicket, *, take_over: bool = False) -> ClaimResult:
        [claimed] = await self._run([(self._claim, self._claim_call(ticket, take_over))])
        return decode_claim(ticket.delivery_id, ticket.token, _raised(claimed))

    def _claim_call(self, ticket: ClaimTicket, take_over: bool = False) -> ScriptCall:
        return claim_call(
            ticket.delivery_id,
            token=ticket.token,
            lease_seconds=self._lease_seconds,
            settings_key=self._settings_key,
            max_attempts=self._max_attempts,
            retention_seconds=self._retention_seconds,
            take_over=take_over,
        )

    async def renew(self, claim: Claimed) -> bool:
        return await self._lease_for(claim, self._lease_seconds)

    async def release(self, claim: Claimed) -> None:
        await self._lease_for(claim, 0.0)

    async def _lease_for(self, claim: Claimed, seconds: float) -> bool:
        call = renew_call(claim.record.id, token=claim.token, lease_seconds=seconds)
        [renewed] = await self._run([(self._renew, call)])
        return bool(_raised(renewed))

    async def fail_unreadable(self, delivery_id: str, claim: Unreadable) -> None:
        call = transition_call(
            delivery_id,
            guard=("status", DeliveryStatus.SENDING.value),
            claim_token=claim.token,
            status=DeliveryStatus.FAILED,
            expire_seconds=self._retention_seconds,
            fields={"last_error": claim.reason, "lease_until": "0"},
        )
        [recorded] = await self._run([(self._transition, call)])
        _raised(recorded)

    async def finish(
        self,
        claim: Claimed,
        outcome: Outcome,
        *,
        claim_next: ClaimTicket | None = None,
    ) -> Finished:
        transition = transition_call(
            claim.record.id,
            guard=("status", DeliveryStatus.SENDING.value),
            claim_token=claim.token,
            status=outcome.status,
            expire_seconds=self._retention_seconds if outcome.status.is_final else 0,
            # A retry is due then (the script writes next_attempt_at): the sweeper publishes it.
            due_in=outcome.retry_in,
            attempt=outcome.attempt,
            fields={
                "recipients": encode_recipients(outcome.recipients),
                "last_error": outcome.last_error or "",
                "lease_until": "0",
                **_due_fields(outcome.retry_in),
                **_waiting_fields(claim, outcome.status, outcome.waiting_for),
                **_staging_fields(outcome.captured_message, outcome.redirected_to),
            },
        )
        if claim_next is None:
            [recorded] = await self._run([(self._transition, transition)])
            return Finished(decode_transition(_raised(recorded)))
        recorded, claimed = await self._run(
            [(self._transition, transition), (self._claim, self._claim_call(claim_next))]
        )
        applied = decode_transition(_raised(recorded))
        if isinstance(claimed, ResponseError):
            # The outcome is recorded; only the claim failed (the script itself, which no
            # second run mends): the next delivery is claimed on its own instead.
            log.warning(
                "delivery %s: claim failed (%s); claiming it again", claim_next.delivery_id, claimed
            )
            return Finished(applied)
        return Finished(applied, decode_claim(claim_next.delivery_id, claim_next.token, claimed))

    async def wait(self, claim: Claimed, *, seconds: float, waiting_for: str) -> bool:
        call = transition_call(
            claim.record.id,
            guard=("status", DeliveryStatus.SENDING.value),
            claim_token=claim.token,
            status=DeliveryStatus.WAITING,
            expire_seconds=0,
            due_in=seconds,
            fields={
                # Not an attempt: the next claim takes the same number again.
                "attempt_count": str(claim.record.attempt_count - 1),
                "waiting_for": waiting_for,
                "lease_until": "0",
            },
        )
        [recorded] = await self._run([(self._transition, call)])
        return decode_transition(_raised(recorded))

    async def _run(self, runs: Sequence[ScriptRun]) -> list[Any]:
        return await rerun_on_lost_reply(lambda: self._pipelines.run(runs))


def _due_fields(retry_in: float | None) -> dict[str, str]:
    """No retry: nothing is due any more. A retry's due time the script writes itself, by
    Redis' clock."""
    return {"next_attempt_at": ""} if retry_in is None else {}


def _waiting_fields(
    claim: Claimed, status: DeliveryStatus, waiting_for: str | None
) -> dict[str, str]:
    """An attempt the provider's quota stopped waits without using up an attempt: the retry
    budget counts from one later. Any other outcome clears what it waited for."""
    if status is DeliveryStatus.WAITING:
        return {"retry_base": str(claim.record.retry_base + 1), "waiting_for": waiting_for or ""}
    return {"waiting_for": ""} if claim.record.waiting_for else {}


def _staging_fields(
    captured_message: bytes | None, redirected_to: tuple[str, ...]
) -> dict[str, str | bytes]:
    """Written only when there is something to write: a delivered e-mail pays nothing."""
    fields: dict[str, str | bytes] = {}
    if captured_message is not None:
        fields[CAPTURED_MESSAGE_FIELD] = captured_message
    if redirected_to:
        fields[REDIRECTED_TO_FIELD] = json.dumps(redirected_to)
    return fields


def _raised(reply: Any) -> Any:
    """A script's reply, or its error raised."""
    if isinstance(reply, ResponseError):
        raise reply
    return reply
