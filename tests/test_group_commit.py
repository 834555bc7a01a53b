"""Group commit against a real Redis: concurrent script calls share pipelines, each caller
gets its own replies, and one caller's trouble is not another's; an outcome recorded in the
same pipeline as a failing claim is recorded once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from config.settings_store import SETTINGS_KEY
from peers.redis_server import RedisServer
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.smtp_delivery import enqueue
from worker.records import (
    Attempt,
    AttemptOutcome,
    Claimed,
    DeliveryStatus,
    Finished,
    Outcome,
    RecipientState,
    RedisClaims,
    record_key,
)
from worker.records.claims import ClaimTicket
from worker.records.group_commit import GroupCommit
from worker.records.scripts import ScriptCall

ECHO = "return {KEYS[1], ARGV[1]}"
FAILS = "return redis.error_reply('no such thing')"


class CountingConnection(aioredis.Connection):
    """Counts what it writes to Redis at once: the round trips a process pays."""

    writes = 0

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        CountingConnection.writes += 1
        await super().send_packed_command(command, check_health)


def call(key: str, value: str) -> ScriptCall:
    return ScriptCall(keys=[key], args=[value])


def test_concurrent_calls_share_one_pipeline_and_get_their_own_replies(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[list[object]]:
        client = aioredis.Redis.from_url(redis_server.url, connection_class=CountingConnection)
        echo = client.register_script(ECHO)
        await echo(keys=["k"], args=["loaded"])
        group = GroupCommit(client)
        CountingConnection.writes = 0
        try:
            # (Through a variable: returned at once, mypy finds gather's result Any.)
            replies: list[list[object]] = await asyncio.gather(
                *(
                    group.run([(echo, call(f"k{n}", "a")), (echo, call(f"k{n}", "b"))])
                    for n in range(40)
                )
            )
            return replies
        finally:
            await client.aclose()

    replies = asyncio.run(scenario())
    assert replies == [[[f"k{n}".encode(), b"a"], [f"k{n}".encode(), b"b"]] for n in range(40)]
    assert CountingConnection.writes == 1  # 40 deliveries' calls, one round trip


def test_a_failing_script_is_its_callers_reply_only(redis_server: RedisServer) -> None:
    async def scenario() -> Sequence[object]:
        client = aioredis.Redis.from_url(redis_server.url)
        echo, fails = client.register_script(ECHO), client.register_script(FAILS)
        await echo(keys=["k"], args=["loaded"])
        group = GroupCommit(client)
        try:
            outcomes: Sequence[object] = await asyncio.gather(
                group.run([(echo, call("k1", "x"))]),
                group.run([(fails, call("k2", "y"))]),
                group.run([(echo, call("k3", "z"))]),
                return_exceptions=True,
            )
            return outcomes
        finally:
            await client.aclose()

    first, failed, third = asyncio.run(scenario())
    assert first == [[b"k1", b"x"]]
    # Returned, not raised: a caller with several calls learns which of them took effect.
    assert isinstance(failed, list)
    [second] = failed
    assert isinstance(second, redis.ResponseError)
    assert "no such thing" in str(second)
    assert third == [[b"k3", b"z"]]


def test_redis_gone_fails_every_caller_and_the_next_call_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def scenario() -> tuple[Sequence[object], Sequence[object]]:
        client = aioredis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        echo = client.register_script(ECHO)
        group = GroupCommit(client)
        try:
            await group.run([(echo, call("k", "warm"))])
            server.stop()
            gone = await asyncio.gather(
                *(group.run([(echo, call("k", str(n)))]) for n in range(3)),
                return_exceptions=True,
            )
            server.start()
            back = await group.run([(echo, call("k", "back"))])
            return gone, back
        finally:
            await client.aclose()
            server.stop()

    gone, back = asyncio.run(scenario())
    assert all(isinstance(error, redis.ConnectionError) for error in gone)
    assert back == [[b"k", b"back"]]  # the script cache was lost with the restart: reloaded


def test_a_stalled_redis_fails_the_callers_within_the_timeout(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def scenario() -> tuple[object, float, float | None]:
        client = aioredis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        echo = client.register_script(ECHO)
        group = GroupCommit(client)
        try:
            await group.run([(echo, call("k", "warm"))])
            os.kill(server.pid, signal.SIGSTOP)
            started = time.monotonic()
            stalled: object = None
            try:
                await group.run([(echo, call("k", "stalled"))])
            except redis.TimeoutError as exc:
                stalled = exc
            waited = time.monotonic() - started
            os.kill(server.pid, signal.SIGCONT)
            # The connection given back to the pool times its own commands again.
            connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            timeout = connection.socket_timeout
            await client.connection_pool.release(connection)
            return stalled, waited, timeout
        finally:
            await client.aclose()
            server.stop()

    stalled, waited, timeout = asyncio.run(scenario())
    assert isinstance(stalled, redis.TimeoutError)
    assert 0.9 < waited < 3
    assert timeout == 1


INCR = "return redis.call('INCR', KEYS[1])"


@pytest.mark.parametrize("cancelled", [0, 1, 2])
def test_a_caller_cancelled_before_its_pipeline_goes_out_runs_nothing(
    redis_server: RedisServer, cancelled: int
) -> None:
    # A claim nobody waits for any more must not be made: its lease would hold the delivery
    # until it lapsed, and count as a lost attempt.
    async def scenario() -> tuple[Sequence[object], int]:
        client = aioredis.Redis.from_url(redis_server.url)
        incr = client.register_script(INCR)
        await client.delete("counter")
        await incr(keys=["loaded"], args=[])
        group = GroupCommit(client)
        try:
            tasks = [
                asyncio.create_task(group.run([(incr, call("counter", "x"))])) for _ in range(3)
            ]
            await asyncio.sleep(0)  # all three wait for the first pipeline
            tasks[cancelled].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, int(await client.get("counter") or 0)
        finally:
            await client.aclose()

    results, counter = asyncio.run(scenario())
    assert isinstance(results[cancelled], asyncio.CancelledError)
    # (Replies only: an exception among them leaves one short of the two expected.)
    kept = [r for n, r in enumerate(results) if n != cancelled and isinstance(r, list)]
    assert sorted(kept) == [[1], [2]]
    assert counter == 2


def test_an_outcome_recorded_with_a_failed_claim_is_recorded_once(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    # The outcome went in; the next delivery's claim failed in the same pipeline. Recording
    # the outcome again would add its attempt twice: the claim is left to be made on its own.
    recorded = enqueue(producer)
    unclaimable = enqueue(producer, subject="other")
    redis_client.delete(record_key(unclaimable))
    redis_client.set(record_key(unclaimable), "not a hash")  # its claim script errors

    async def scenario() -> Finished:
        client = aioredis.Redis.from_url(outbox_context.redis_location.url)
        claims = RedisClaims(
            client,
            settings_key=SETTINGS_KEY,
            lease_seconds=30,
            max_attempts=3,
            retention_seconds=60,
        )
        try:
            claim = await claims.claim(ClaimTicket(recorded))
            assert isinstance(claim, Claimed)
            outcome = Outcome(
                status=DeliveryStatus.SENT,
                attempt=Attempt(1, time.time(), 1.0, AttemptOutcome.SENT, 250, "OK"),
                recipients=tuple(
                    replace(r, status=RecipientState.SENT) for r in claim.record.recipients
                ),
            )
            return await claims.finish(claim, outcome, claim_next=ClaimTicket(unclaimable))
        finally:
            await client.aclose()

    finished = asyncio.run(scenario())
    assert finished == Finished(applied=True, next_claim=None)
    record = outbox_context.deliveries.get(recorded)
    assert (record.status, len(record.attempts)) == (DeliveryStatus.SENT, 1)
