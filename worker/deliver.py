"""One delivery attempt: claim, send with the current settings, record, decide what comes next."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import redis
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from config.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    QuotaError,
    TransientError,
)
from config.settings_store import StoredSettings
from worker.backoff import RetryPolicy
from worker.classify import enhanced_status
from worker.decision import AttemptFacts, Wait, decide
from worker.records import (
    AccountPause,
    AlreadyFinal,
    Busy,
    Claimed,
    ClaimResult,
    ClaimStore,
    DeliveryRecord,
    DeliveryStatus,
    Early,
    Exhausted,
    Finished,
    Missing,
    Outcome,
    Unreadable,
)
from worker.records.claims import ClaimTicket
from worker.records.scripts import Lapsed
from worker.scrubbing import scrub
from worker.sending_limits import RATE_PAUSE_SECONDS, MustWait, SendingGate
from worker.transports.base import SendResult, Transport

__all__ = [
    "NOT_CONFIGURED",
    "Deliverer",
    "JobOutcome",
    "SettingsSource",
    "TransportCache",
]

log = logging.getLogger(__name__)

# How long an attempt's outcome is held while Redis cannot take it, before the job gives up
# (the claim then lapses, and the delivery is taken over and attempted again).
RECORD_PATIENCE_SECONDS = 60.0
# A send starts only while the claim's last confirmation (its claim, or a renewal) is more
# recent than this share of a lease: a process stalled longer (its heartbeat could not run)
# may have lost the claim without knowing it.
_CONFIRMED_SHARE_OF_LEASE = 2 / 3

NOT_CONFIGURED = "mail settings are not configured; run `outbox settings set ...`, then retry"


class JobOutcome(StrEnum):
    """What one job did with one delivery id; shown (as text) in Flower's task results."""

    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cancelled before this job claimed it: not sent
    CAPTURED = "captured"  # kept, not sent (the ``capture`` delivery mode)
    RETRYING = "retrying"  # a retry is due later: the sweeper publishes it then
    WAITING = "waiting"  # for the account's sending limit or pause: published when it ends
    MISSING = "missing"  # no record: expired or purged
    BUSY = "busy"  # another process holds the claim (the sweeper looks again if it lapses)
    EARLY = "early"  # before its scheduled retry or send time: left to the sweeper then

    @classmethod
    def of(cls, status: DeliveryStatus) -> JobOutcome:
        """The outcome for a delivery that ended (or already was) in ``status``."""
        return cls(status.value)


class SettingsSource(Protocol):
    """The mail settings of a version (as the claim read it); None when none are saved."""

    async def get(self, version: int) -> StoredSettings | None: ...


class TransportCache:
    """The transport for the current settings version; the previous one is closed on change."""

    def __init__(self, factory: Callable[[StoredSettings], Transport]) -> None:
        self._factory = factory
        self._version: int | None = None
        self._transport: Transport | None = None

    async def get(self, stored: StoredSettings) -> Transport:
        transport = self._transport
        if transport is None or self._version != stored.version:
            retired = transport
            # Swap before awaiting the close, so concurrent sends never build a second one.
            transport = self._transport = self._factory(stored)
            self._version = stored.version
            if retired is not None:
                await retired.aclose()
        return transport

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None


@dataclass(frozen=True, slots=True)
class Deliverer:
    """Everything one delivery attempt needs, handed in by the process that owns it."""

    claims: ClaimStore
    settings: SettingsSource
    transports: TransportCache
    policy: RetryPolicy
    in_flight: asyncio.Semaphore
    gate: SendingGate
    clock: Callable[[], float] = field(default=time.time)

    async def deliver_many(
        self, delivery_ids: Sequence[str], when_drained: Callable[[], None] | None = None
    ) -> list[JobOutcome]:
        """Attempt each delivery; returns the status each ends in (or why it was skipped).

        Lanes, as many as ``in_flight`` allows (so the loop's CPU work never delays the replies
        open connections are waiting for), take the ids in order, each as soon as it is free.
        A delivery is claimed only when its turn comes, so its lease covers its own attempt,
        not the wait before it; a lane records an attempt and claims its next delivery in one
        round trip. One failing does not stop the others: they all finish, then the first
        error is raised (the task is retried, and what was recorded meanwhile is skipped).

        A delivery whose process died mid-attempt (its claim lapsed) may be what killed it:
        it is set aside, then taken over and attempted once the others are done, one at a
        time, alone in the job. Should it kill the process again, only its own attempt is
        lost, not those of the deliveries that would have been in flight beside it.

        ``when_drained`` is called once the last id has been handed to a lane, while the last
        deliveries are still in flight (the process takes its next job then): never for a
        job with deliveries set aside, so nothing new joins them (a job taken ahead before one
        was set aside may still be finishing beside them).
        """
        turns = _Turns(delivery_ids, when_drained)
        results = await asyncio.gather(
            *(self._lane(turns) for _ in delivery_ids), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for turn in turns.aside():
            await self._alone(turn, turns)
        return turns.outcomes()

    async def _lane(self, turns: _Turns) -> None:
        async with self.in_flight:
            claimed: _ClaimedTurn | None = None
            while True:
                if claimed is None:
                    turn = turns.take()
                    if turn is None:
                        return
                    claimed = await self._claimed(turn)
                if isinstance(claimed.claim, Lapsed):
                    turns.set_aside(claimed.turn)
                    claimed = None
                    continue
                outcome, claimed_next = await self._handle(claimed, turns)
                turns.done(claimed.turn, outcome)
                claimed = claimed_next

    async def _alone(self, turn: _Turn, turns: _Turns) -> None:
        """Take over a lapsed claim and attempt its delivery with nothing else in flight."""
        async with self.in_flight:
            claimed = await self._claimed(turn, take_over=True)
            nothing_follows = _Turns(())  # its outcome is recorded without a next claim
            outcome, _ = await self._handle(claimed, nothing_follows)
            turns.done(turn, outcome)

    async def _claimed(self, turn: _Turn, *, take_over: bool = False) -> _ClaimedTurn:
        asked_at = time.monotonic()
        return _ClaimedTurn(
            turn, await self.claims.claim(turn.ticket, take_over=take_over), asked_at
        )

    async def _handle(
        self, claimed: _ClaimedTurn, turns: _Turns
    ) -> tuple[JobOutcome, _ClaimedTurn | None]:
        """The outcome of one turn, and the next turn when recording it claimed one."""
        delivery_id = claimed.turn.delivery_id
        match claimed.claim:
            case Missing():
                log.warning(
                    "delivery %s: no record (expired or purged); nothing to send", delivery_id
                )
                return JobOutcome.MISSING, None
            case AlreadyFinal(status=status):
                log.info("delivery %s is already %s; not sending again", delivery_id, status)
                return JobOutcome.of(status), None
            case Busy() | Lapsed():
                # A duplicate job while a live process holds it; if that process dies, its
                # lease lapses and the sweeper publishes the delivery again. (A lapsed claim
                # never gets here: the lanes set it aside, and a take-over claims it.)
                return JobOutcome.BUSY, None
            case Early():
                return JobOutcome.EARLY, None
            case Exhausted(reason=reason):
                log.error("delivery %s failed: %s", delivery_id, reason)
                return JobOutcome.FAILED, None
            case Unreadable() as unreadable:
                log.error("delivery %s: %s", delivery_id, unreadable.reason)
                await self.claims.fail_unreadable(delivery_id, unreadable)
                return JobOutcome.FAILED, None
            case Claimed() as claim:
                return await self._attempt(claim, claimed.asked_at, turns)

    async def _attempt(
        self, claim: Claimed, claimed_at: float, turns: _Turns
    ) -> tuple[JobOutcome, _ClaimedTurn | None]:
        record = claim.record
        started = self.clock()
        pending = [r.address for r in record.recipients if r.status.needs_sending]
        result: SendResult | None = None
        stored: StoredSettings | None = None
        error: DeliveryError | None = None
        account: str | None = None
        try:
            async with self._claim_kept(claim, claimed_at) as lease:
                stored = await self.settings.get(claim.settings_version)
                if stored is None:
                    raise ConfigurationError(NOT_CONFIGURED)
                account = stored.settings.sending_account
                admitted = await self._admission(record, stored, account, claim.pause, pending)
                if isinstance(admitted, Wait):
                    return await self._wait(claim, admitted)
                pending = admitted
                result = await self._send(record, stored, pending, lease)
        except DeliveryError as exc:
            error = exc
        except asyncio.CancelledError:
            # Abandoned (the task was cancelled): let another worker take over at once
            # rather than when the lease would have run out.
            with contextlib.suppress(redis.RedisError):
                await self.claims.release(claim)
            raise
        except redis.RedisError:
            # The record store itself is unreachable: nothing can be recorded. The claim's
            # lease lapses, and the sweeper publishes the delivery again.
            raise
        except Exception as exc:
            # A bug or an unexpected library error fails this delivery, not the worker.
            error = _internal_error(record.id, exc, stored)
        facts = AttemptFacts(
            record,
            pending,
            started=started,
            ended=self.clock(),
            result=result,
            error=error,
            pause=await self._pause_for(account, result, error),
            redirect_to=stored.settings.redirect_to if stored is not None else (),
        )
        return await self._record(claim, decide(facts, self.policy), turns)

    @contextlib.asynccontextmanager
    async def _claim_kept(self, claim: Claimed, claimed_at: float) -> AsyncIterator[_Lease]:
        """Renew the claim's lease while the attempt runs, however long it takes (a large
        Graph upload, a wait for a connection): only a dead process lets it lapse. The lease
        yielded says whether the claim is surely still this process's."""
        lease = _Lease(self.claims.lease_seconds, claimed_at)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.claims.lease_seconds / 3)
                asked_at = time.monotonic()
                try:
                    if await self.claims.renew(claim):
                        lease.renewed(asked_at)
                        continue
                    lease.failed("its claim was lost to another process")
                    log.warning("delivery %s: claim lost during the attempt", claim.record.id)
                    return
                except redis.RedisError as exc:
                    lease.failed(f"its claim could not be renewed ({type(exc).__name__})")
                    log.warning("delivery %s: could not renew the claim", claim.record.id)

        beating = asyncio.create_task(heartbeat())
        try:
            yield lease
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def _admission(
        self,
        record: DeliveryRecord,
        stored: StoredSettings,
        account: str,
        pause: AccountPause | None,
        pending: list[str],
    ) -> list[str] | Wait:
        """The recipients to send to now, or what the delivery must wait for: the account's
        pause (read with the claim), then its sending limits (one round trip, only when
        limits are set)."""
        settings = stored.settings
        if pause is not None and pause.account == account:
            return Wait(pause.seconds_left, f"the provider's pause of {pause.reason}")
        if not settings.has_rate_limits or not pending:
            return pending
        per_minute = settings.max_messages_per_minute
        while (
            not settings.redirects  # all go at once (the settings made sure they fit)
            and per_minute is not None
            and settings.transactions(len(pending)) > per_minute
        ):
            # More transactions than a minute allows: the rest go in a later attempt.
            pending = pending[: len(pending) * per_minute // settings.transactions(len(pending))]
        # What the server gets counts: in redirect mode, the redirect addresses.
        envelope = settings.redirected_recipients(len(pending))
        verdict = await self.gate.admit(
            account,
            f"{record.id}:{record.attempt_count}",
            transactions=settings.transactions(envelope),
            recipients=envelope,
            limits=settings.limits,
        )
        if isinstance(verdict, MustWait):
            return Wait(verdict.seconds, verdict.waiting_for)
        return pending

    async def _wait(self, claim: Claimed, wait: Wait) -> tuple[JobOutcome, None]:
        """Give the delivery back until it may go: no attempt, and no lane held meanwhile."""
        delivery_id = claim.record.id
        if not await self.claims.wait(claim, seconds=wait.seconds, waiting_for=wait.waiting_for):
            log.warning("delivery %s: claim lost before its wait was recorded", delivery_id)
        log.info("delivery %s waits %.1f s for the sending account", delivery_id, wait.seconds)
        return JobOutcome.WAITING, None

    async def _send(
        self, record: DeliveryRecord, stored: StoredSettings, pending: list[str], lease: _Lease
    ) -> SendResult:
        transport = await self.transports.get(stored)
        # Checked before a connection is taken, and again right before the message itself
        # goes (DATA, Graph's send): a claim lost while the send waited for a connection or
        # named its recipients stops it there.
        lease.check()
        # The Date header: when it was meant to go, for an e-mail scheduled ahead.
        date = record.send_at or record.created_at
        return await transport.send(record.message, pending, date, before_data=lease.check)

    async def _pause_for(
        self, account: str | None, result: SendResult | None, error: DeliveryError | None
    ) -> Wait | None:
        """After the provider refused for its quota: the account pauses for every worker
        (as long as the reply said, else the provider's documented window), and this
        delivery waits as long."""
        quota = error if isinstance(error, QuotaError) else (result.quota if result else None)
        if quota is None or account is None:
            return None
        reply = f"{quota.code} {quota.reply}" if quota.code and quota.reply else quota.reason
        try:
            seconds = await self.gate.pause(
                account, quota.retry_after, daily=quota.daily, reason=reply
            )
        except redis.RedisError:
            log.warning("could not record the account's pause; this delivery waits alone")
            seconds = quota.retry_after or RATE_PAUSE_SECONDS
        # Only the codes: the account names the mailbox, and a reply may name a recipient.
        log.warning(
            "the sending account is paused for %.0f s (%s %s)",
            seconds,
            quota.code or "",
            enhanced_status(quota.reply) or "",
        )
        return Wait(seconds, f"the provider's pause of {reply}")

    async def _record(
        self, claim: Claimed, outcome: Outcome, turns: _Turns
    ) -> tuple[JobOutcome, _ClaimedTurn | None]:
        """Write the outcome, claiming the job's next turn in the same round trip."""
        record = claim.record
        asked_at = time.monotonic()

        async def finish(claim_next: ClaimTicket | None) -> Finished:
            nonlocal asked_at
            asked_at = time.monotonic()  # of the try that goes through: the next claim's age
            return await self.claims.finish(claim, outcome, claim_next=claim_next)

        following = turns.take()
        finished = await self._recorded(finish, following.ticket if following else None)
        if not finished.applied:
            log.warning("delivery %s: claim lost before the attempt was recorded", record.id)
        status = outcome.status
        log.info("delivery %s attempt %d: %s", record.id, record.attempt_count, status.value)
        claimed_next = None
        if following is not None:
            if finished.next_claim is None:
                turns.give_back(following)
            else:
                claimed_next = _ClaimedTurn(following, finished.next_claim, asked_at)
        return JobOutcome.of(status), claimed_next

    async def _recorded(
        self,
        finish: Callable[[ClaimTicket | None], Awaitable[Finished]],
        following: ClaimTicket | None,
    ) -> Finished:
        """Record an attempt (claiming the following turn with it) and wait out a Redis outage.

        What was sent must be recorded, or it is sent again: while Redis is away (a restart),
        keep trying for a while rather than leave the outcome to a take-over. Trying again is
        safe: the claim tokens make an outcome or a claim that went through before answer
        the same again, and add nothing.
        """
        try:
            return await finish(following)  # tenacity only when needed: it costs per call
        except redis.RedisError:
            log.warning("could not record an attempt; trying again while Redis is away")
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(redis.RedisError),
            wait=wait_exponential(multiplier=0.1, max=2),
            stop=stop_after_delay(RECORD_PATIENCE_SECONDS),
            reraise=True,
        )
        return await retrying(finish, following)


def _internal_error(
    delivery_id: str, exc: Exception, stored: StoredSettings | None
) -> PermanentError:
    """The error that fails a delivery an unexpected exception stopped, logged with its
    traceback. Its text (and its traceback's) may quote what was sent: the stored secret is
    kept out of both the record and the log."""
    secrets = _secrets_of(stored)
    text = scrub(f"{type(exc).__name__}: {exc}", secrets)
    trace = scrub("".join(traceback.format_exception(exc)), secrets)
    log.error("delivery %s: unexpected %s\n%s", delivery_id, text, trace)
    return PermanentError(f"internal error: {text}")


def _secrets_of(stored: StoredSettings | None) -> tuple[str, ...]:
    secret = stored.settings.secret() if stored is not None else None
    return (secret.get_secret_value(),) if secret is not None else ()


class _Lease:
    """What the attempt knows of its claim: surely still its own while no renewal failed and
    the last confirmation (by ``time.monotonic``, taken before asking) is recent enough."""

    def __init__(self, lease_seconds: float, confirmed_at: float) -> None:
        self._lease_seconds = lease_seconds
        self._confirmed_at = confirmed_at
        self._trouble: str | None = None

    def renewed(self, asked_at: float) -> None:
        self._confirmed_at = asked_at
        self._trouble = None  # a renewal proves the claim is still ours

    def failed(self, trouble: str) -> None:
        self._trouble = trouble

    def check(self) -> None:
        """Raise ``TransientError`` unless the claim is surely still ours: the attempt stops
        before sending, and is recorded if it still is (a retry follows)."""
        trouble = self._trouble
        if trouble is None:
            held_for = time.monotonic() - self._confirmed_at
            if held_for < self._lease_seconds * _CONFIRMED_SHARE_OF_LEASE:
                return
            trouble = f"its claim was last confirmed {held_for:.1f} s ago"
        raise TransientError(f"not sent: {trouble}")


@dataclass(frozen=True, slots=True)
class _Turn:
    """One id of a job, at its place in the job, and the ticket its claim is made with."""

    index: int
    ticket: ClaimTicket

    @property
    def delivery_id(self) -> str:
        return self.ticket.delivery_id


@dataclass(frozen=True, slots=True)
class _ClaimedTurn:
    """A turn, what claiming its delivery gave, and when (``time.monotonic``) it was asked."""

    turn: _Turn
    claim: ClaimResult
    asked_at: float


class _Turns:
    """A job's delivery ids, handed to lanes one at a time in order, and each one's outcome."""

    def __init__(
        self, delivery_ids: Sequence[str], when_drained: Callable[[], None] | None = None
    ) -> None:
        self._waiting = deque(_Turn(i, ClaimTicket(d)) for i, d in enumerate(delivery_ids))
        self._outcomes: list[JobOutcome | None] = [None] * len(delivery_ids)
        self._set_aside: list[_Turn] = []
        self._when_drained = when_drained

    def take(self) -> _Turn | None:
        if self._waiting:
            return self._waiting.popleft()
        when_drained, self._when_drained = self._when_drained, None
        if when_drained is not None and not self._set_aside:
            # The job's set-aside deliveries are attempted alone: nothing joins them.
            when_drained()
        return None

    def give_back(self, turn: _Turn) -> None:
        self._waiting.appendleft(turn)

    def set_aside(self, turn: _Turn) -> None:
        """Keep ``turn`` for after the others (its claim lapsed)."""
        self._set_aside.append(turn)

    def aside(self) -> list[_Turn]:
        """The turns set aside, in the job's order."""
        return sorted(self._set_aside, key=lambda t: t.index)

    def done(self, turn: _Turn, outcome: JobOutcome) -> None:
        self._outcomes[turn.index] = outcome

    def outcomes(self) -> list[JobOutcome]:
        done = [o for o in self._outcomes if o is not None]
        if len(done) != len(self._outcomes):
            raise RuntimeError("a job ended with deliveries not attempted")  # a lane's bug
        return done
