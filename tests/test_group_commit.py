"""Group commit against a real Redis: concurrent script calls share pipelines, each caller
gets its own replies, and one caller's trouble is not another's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from worker.records.group_commit import GroupCommit
from worker.records.scripts import ScriptCall
from worker.testing.redis_server import RedisServer

ECHO = "return {KEYS[1], ARGV[1]}"
FAILS = "return redis.error_reply('no such thing')"


class CountingRedis(aioredis.Redis):
    """Counts the pipelines it sends, as the round trips a process pays."""

    pipelines_sent = 0

    def pipeline(
        self, transaction: bool = True, shard_hint: object = None
    ) -> aioredis.client.Pipeline:
        CountingRedis.pipelines_sent += 1
        return super().pipeline(transaction, shard_hint)  # type: ignore[arg-type]


def call(key: str, value: str) -> ScriptCall:
    return ScriptCall(keys=[key], args=[value])


def test_concurrent_calls_share_one_pipeline_and_get_their_own_replies(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[list[object]]:
        client = CountingRedis.from_url(redis_server.url)
        echo = client.register_script(ECHO)
        await echo(keys=["k"], args=["loaded"])
        group = GroupCommit(client)
        CountingRedis.pipelines_sent = 0
        try:
            return await asyncio.gather(
                *(
                    group.run([(echo, call(f"k{n}", "a")), (echo, call(f"k{n}", "b"))])
                    for n in range(40)
                )
            )
        finally:
            await client.aclose()

    replies = asyncio.run(scenario())
    assert replies == [[[f"k{n}".encode(), b"a"], [f"k{n}".encode(), b"b"]] for n in range(40)]
    assert CountingRedis.pipelines_sent == 1  # 40 deliveries' calls, one round trip


def test_a_failing_script_fails_its_caller_only(redis_server: RedisServer) -> None:
    async def scenario() -> list[object]:
        client = aioredis.Redis.from_url(redis_server.url)
        echo, fails = client.register_script(ECHO), client.register_script(FAILS)
        await echo(keys=["k"], args=["loaded"])
        group = GroupCommit(client)
        try:
            return await asyncio.gather(
                group.run([(echo, call("k1", "x"))]),
                group.run([(fails, call("k2", "y"))]),
                group.run([(echo, call("k3", "z"))]),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    first, second, third = asyncio.run(scenario())
    assert first == [[b"k1", b"x"]]
    assert isinstance(second, redis.ResponseError)
    assert "no such thing" in str(second)
    assert third == [[b"k3", b"z"]]


def test_redis_gone_fails_every_caller_and_the_next_call_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def scenario() -> tuple[list[object], list[object]]:
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


@pytest.mark.parametrize("cancelled", [0, 1])
def test_a_cancelled_caller_does_not_stop_the_others(
    redis_server: RedisServer, cancelled: int
) -> None:
    async def scenario() -> list[object]:
        client = aioredis.Redis.from_url(redis_server.url)
        echo = client.register_script(ECHO)
        await echo(keys=["k"], args=["loaded"])
        group = GroupCommit(client)
        try:
            tasks = [asyncio.create_task(group.run([(echo, call("k", str(n)))])) for n in range(3)]
            await asyncio.sleep(0)
            tasks[cancelled].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.aclose()

    results = asyncio.run(scenario())
    assert isinstance(results[cancelled], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != cancelled] == [
        [[b"k", str(n).encode()]] for n in range(3) if n != cancelled
    ]
