"""At most once per script, one clock: against a real Redis, a claim, renewal or outcome run
again after its reply was lost takes effect once; a stale claim (taken over, or reset by an
operator) changes nothing; a worker's own clock, however far off, decides no lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

import pytest
import redis
import redis.asyncio as aioredis

from config.errors import TransientError
from config.mail_settings import SmtpSettings
from config.redis_location import RedisLocation
from config.settings_store import SETTINGS_KEY, StoredSettings
from peers.redis_server import RedisServer
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.smtp_delivery import enqueue
from worker.backoff import RetryPolicy
from worker.deliver import Deliverer, JobOutcome, TransportCache
from worker.message import OutgoingMessage
from worker.records import (
    Attempt,
    AttemptOutcome,
    Busy,
    Claimed,
    DeliveryStatus,
    Exhausted,
    Outcome,
    RecipientState,
    RedisClaims,
    record_key,
)
from worker.records.claims import ClaimTicket
from worker.records.codec import as_text
from worker.records.scripts import ALREADY_DONE, TRANSITION, Lapsed, transition_call
from worker.runtime import worker_redis
from worker.sending_limits import MemoryGate
from worker.transports.memory import MemoryTransport

LEASE_SECONDS = 30
# Short enough for a lost reply to cost little test time, long enough for a loaded machine.
REPLY_TIMEOUT_SECONDS = 0.5


def claims_on(client: aioredis.Redis) -> RedisClaims:
    return RedisClaims(
        client,
        settings_key=SETTINGS_KEY,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        retention_seconds=600,
    )


async def record_attempt(claims: RedisClaims, claim: Claimed, *, sent: bool = True) -> bool:
    """Record the attempt of ``claim``: every recipient reached, or refused for good; whether
    that took effect."""
    state = RecipientState.SENT if sent else RecipientState.FAILED
    outcome = Outcome(
        status=DeliveryStatus.SENT if sent else DeliveryStatus.FAILED,
        attempt=Attempt(
            claim.record.attempt_count,
            time.time(),
            1.0,
            AttemptOutcome.SENT if sent else AttemptOutcome.PERMANENT,
            error=None if sent else "554 no",
        ),
        recipients=tuple(replace(r, status=state) for r in claim.record.recipients),
    )
    finished = await claims.finish(claim, outcome)
    return finished.applied


@contextlib.asynccontextmanager
async def worker_claims(url: str, **timeouts: float) -> AsyncIterator[RedisClaims]:
    client = worker_redis(RedisLocation(url), **timeouts)
    try:
        yield claims_on(client)
    finally:
        await client.aclose()


def test_a_claim_made_again_with_its_token_is_claimed_not_busy(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> tuple[object, object, object]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            ticket = ClaimTicket(delivery_id)
            first = await claims.claim(ticket)
            again = await claims.claim(ticket)  # its reply was lost: asked again
            someone_else = await claims.claim(ClaimTicket(delivery_id))
            return first, again, someone_else

    first, again, someone_else = asyncio.run(scenario())
    assert isinstance(first, Claimed)
    assert isinstance(again, Claimed)
    assert again.record.attempt_count == first.record.attempt_count == 1
    assert isinstance(someone_else, Busy)
    assert outbox_context.deliveries.get(delivery_id).attempts == ()  # nothing "lost"


def test_a_claim_made_again_after_its_lease_lapsed_starts_its_lease_again(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    """The first reply was lost and asking again took longer than a lease (Redis was away):
    the claim answered again comes with a live lease, not one another worker may take."""
    delivery_id = enqueue(producer)

    async def scenario() -> tuple[object, object]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            ticket = ClaimTicket(delivery_id)
            await claims.claim(ticket)
            redis_client.hset(record_key(delivery_id), "lease_until", "0")  # it lapsed meanwhile
            again = await claims.claim(ticket)
            someone_else = await claims.claim(ClaimTicket(delivery_id), take_over=True)
            return again, someone_else

    again, someone_else = asyncio.run(scenario())
    assert isinstance(again, Claimed)
    assert isinstance(someone_else, Busy)
    lease_until = float(redis_client.hget(record_key(delivery_id), "lease_until") or 0)
    assert lease_until > redis_client.time()[0]
    assert redis_client.zscore("outbox:due", delivery_id) == pytest.approx(lease_until, abs=0.01)


def test_a_lapsed_claim_is_taken_over_only_by_a_claim_that_asks_to(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> list[object]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            answers: list[object] = []
            for _ in range(3):  # its process dies during each attempt
                await claims.claim(ClaimTicket(delivery_id), take_over=True)
                redis_client.hset(record_key(delivery_id), "lease_until", "0")
                answers.append(await claims.claim(ClaimTicket(delivery_id)))
            return answers

    lapsed, still_lapsed, exhausted = asyncio.run(scenario())
    assert isinstance(lapsed, Lapsed)
    assert isinstance(still_lapsed, Lapsed)
    # The last allowed attempt was lost: failing it needs no take-over, nothing is sent.
    assert isinstance(exhausted, Exhausted)
    record = outbox_context.deliveries.get(delivery_id)
    assert record.status is DeliveryStatus.FAILED
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.LOST] * 3


def test_an_outcome_recorded_again_is_already_done_and_adds_no_attempt(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> tuple[bool, bool]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            claim = await claims.claim(ClaimTicket(delivery_id))
            assert isinstance(claim, Claimed)
            return await record_attempt(claims, claim), await record_attempt(claims, claim)

    assert asyncio.run(scenario()) == (True, True)
    record = outbox_context.deliveries.get(delivery_id)
    assert (record.status, len(record.attempts)) == (DeliveryStatus.SENT, 1)
    # The script's own answer to the call run again: already done, not applied again.
    token = redis_client.hget(record_key(delivery_id), "claim_token")
    assert token is not None
    call = transition_call(
        delivery_id,
        guard=("status", DeliveryStatus.SENDING.value),
        claim_token=as_text(token),
        status=DeliveryStatus.SENT,
        expire_seconds=600,
        attempt=Attempt(1, time.time(), 1.0, AttemptOutcome.SENT),
    )
    assert redis_client.register_script(TRANSITION)(keys=call.keys, args=call.args) == (
        ALREADY_DONE
    )
    assert len(outbox_context.deliveries.get(delivery_id).attempts) == 1


def test_a_wait_recorded_again_gives_the_attempt_back_once(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> None:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            claim = await claims.claim(ClaimTicket(delivery_id))
            assert isinstance(claim, Claimed)
            for _ in range(2):
                assert await claims.wait(claim, seconds=60, waiting_for="the sending limit")

    asyncio.run(scenario())
    record = outbox_context.deliveries.get(delivery_id)
    assert (record.status, record.attempt_count) == (DeliveryStatus.WAITING, 0)


def test_a_claim_taken_over_or_reset_by_an_operator_is_beyond_its_old_holder(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> None:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            stalled = await claims.claim(ClaimTicket(delivery_id))
            assert isinstance(stalled, Claimed)
            # Its process stalled past the lease; another one took the delivery over.
            redis_client.hset(record_key(delivery_id), "lease_until", "0")
            taker = await claims.claim(ClaimTicket(delivery_id), take_over=True)
            assert isinstance(taker, Claimed)
            assert not await claims.renew(stalled)
            assert not await record_attempt(claims, stalled)
            assert not await claims.wait(stalled, seconds=60, waiting_for="x")
            await claims.release(stalled)
            assert await record_attempt(claims, taker, sent=False)
            # The operator retries the failed delivery; the taker's calls, made again late,
            # must not undo that.
            await asyncio.to_thread(outbox_context.deliveries.reset_for_retry, delivery_id)
            assert not await claims.renew(taker)
            await claims.release(taker)
            await record_attempt(claims, taker)

    asyncio.run(scenario())
    record = outbox_context.deliveries.get(delivery_id)
    assert record.status is DeliveryStatus.QUEUED
    assert {r.status for r in record.recipients} == {RecipientState.PENDING}
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.LOST, AttemptOutcome.PERMANENT]


class LossyProxy:
    """A TCP proxy in front of Redis that can lose the next reply on its way back, as a reply
    that times out after Redis ran the command is lost."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._lose_next = False
        self.lost = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def lose_next_reply(self) -> None:
        self._lose_next = True

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        await asyncio.gather(
            self._pump(client_in, redis_out, lossy=False),
            self._pump(redis_in, client_out, lossy=True),
            return_exceptions=True,
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, lossy: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if lossy and self._lose_next:
                    self._lose_next, self.lost = False, self.lost + 1
                    continue
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_the_workers_client_never_runs_a_command_again_by_itself(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url

    async def scenario() -> tuple[BaseException | None, int]:
        async with LossyProxy(port_of(url)) as proxy:
            client = worker_redis(RedisLocation(proxy.url), socket_timeout=REPLY_TIMEOUT_SECONDS)
            direct = aioredis.Redis.from_url(url)
            try:
                await direct.delete("runs")
                await client.incr("runs")  # connected
                proxy.lose_next_reply()
                raised: BaseException | None = None
                try:
                    await client.incr("runs")
                except redis.TimeoutError as exc:
                    raised = exc
                return raised, int(await direct.get("runs") or 0)
            finally:
                await client.aclose()
                await direct.aclose()

    raised, runs = asyncio.run(scenario())
    # redis-py's default (ten retries) would have run it again and answered 3.
    assert isinstance(raised, redis.TimeoutError)
    assert runs == 2


def test_a_delivery_whose_claim_and_outcome_replies_were_lost_is_sent_and_recorded_once(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    warm, delivery_id = enqueue(producer), enqueue(producer, subject="the one")
    url = outbox_context.redis_location.url

    async def scenario() -> tuple[list[JobOutcome], int]:
        async with (
            LossyProxy(port_of(url)) as proxy,
            worker_claims(proxy.url, socket_timeout=REPLY_TIMEOUT_SECONDS) as claims,
        ):

            def accepted_then_reply_lost(
                message: OutgoingMessage, recipients: Sequence[str]
            ) -> Mapping[str, int]:
                if message.subject == "the one":
                    proxy.lose_next_reply()  # the outcome's
                return {}

            deliverer = deliverer_on(claims, time.time, accepted_then_reply_lost)
            # The scripts loaded, a connection open: a lost reply is one of a script that ran.
            assert await deliverer.deliver_many([warm]) == [JobOutcome.SENT]
            proxy.lose_next_reply()  # the claim's
            return await deliverer.deliver_many([delivery_id]), proxy.lost

    outcomes, lost = asyncio.run(scenario())
    assert lost == 2
    assert outcomes == [JobOutcome.SENT]  # its own claim was not "busy"
    record = outbox_context.deliveries.get(delivery_id)
    assert (record.status, record.attempt_count) == (DeliveryStatus.SENT, 1)
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.SENT]  # recorded once


class AnySettings:
    """Whatever version the claim read, settings that send through the memory transport."""

    async def get(self, version: int) -> StoredSettings | None:
        return StoredSettings(1, SmtpSettings(from_mailbox="robot@example.com"), saved_at=0.0)


def deliverer_on(
    claims: RedisClaims, clock: Callable[[], float], handler: Callable[..., Mapping[str, int]]
) -> Deliverer:
    """A deliverer over ``claims`` whose clock (for its own stamps) is ``clock``."""
    return Deliverer(
        claims=claims,
        settings=AnySettings(),
        transports=TransportCache(lambda stored: MemoryTransport(handler)),
        policy=RetryPolicy(base_seconds=10, max_seconds=60, max_attempts=3, random=lambda: 0.5),
        in_flight=asyncio.Semaphore(4),
        gate=MemoryGate(clock=clock),
        clock=clock,
    )


def accepted(message: OutgoingMessage, recipients: Sequence[str]) -> Mapping[str, int]:
    return {}


def test_a_worker_whose_clock_runs_an_hour_ahead_cannot_take_over_a_live_claim(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    delivery_id = enqueue(producer)

    async def scenario() -> list[JobOutcome]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            assert isinstance(await claims.claim(ClaimTicket(delivery_id)), Claimed)
            ahead = deliverer_on(claims, lambda: time.time() + 3600, accepted)
            return await ahead.deliver_many([delivery_id])

    assert asyncio.run(scenario()) == [JobOutcome.BUSY]
    record = outbox_context.deliveries.get(delivery_id)
    assert (record.status, record.attempt_count, record.attempts) == (
        DeliveryStatus.SENDING,
        1,
        (),
    )


def test_a_retry_is_due_by_redis_clock_whatever_the_workers_clock_says(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    delivery_id = enqueue(producer)

    def refused_for_now(message: OutgoingMessage, recipients: Sequence[str]) -> Mapping[str, int]:
        raise TransientError("451 later", code=451)

    async def scenario() -> list[JobOutcome]:
        async with worker_claims(outbox_context.redis_location.url) as claims:
            behind = deliverer_on(claims, lambda: time.time() - 3600, refused_for_now)
            return await behind.deliver_many([delivery_id])

    assert asyncio.run(scenario()) == [JobOutcome.RETRYING]
    record = outbox_context.deliveries.get(delivery_id)
    seconds, micros = redis_client.time()
    redis_now = seconds + micros / 1e6
    # Half the first backoff's ceiling (10 s) from Redis' now, not from an hour ago.
    assert record.next_attempt_at == pytest.approx(redis_now + 5, abs=2)
    assert redis_client.zscore("outbox:due", delivery_id) == pytest.approx(redis_now + 5, abs=2)
