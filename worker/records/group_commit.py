"""Script calls of concurrent deliveries sent to Redis together, one pipeline per round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.records.scripts import ScriptCall

__all__ = ["GroupCommit", "ScriptRun"]

ScriptRun = tuple[AsyncScript, ScriptCall]


@dataclass(slots=True)
class _Waiting:
    runs: Sequence[ScriptRun]
    replies: asyncio.Future[list[Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """Runs script calls in pipelines: the calls made while one pipeline is in flight go
    together in the next one.

    A busy process thus pays one round trip for several deliveries' claims and outcomes,
    and an idle one waits for nothing: a call with no pipeline in flight goes at once.

    The pipelines go over one connection of the client's pool, kept for them: the commands
    packed by the connection (hiredis where installed) and written at once, the replies
    read in order. redis-py's ``Pipeline`` does the same with a connection taken from the
    pool and given back, its command stack and reply callbacks every time, which costs
    about twice the CPU per round trip. A connection that fails is dropped, and so is one
    to a primary the sentinels no longer name (the pool gives idle connections up then, and
    this one is never idle): the next batch takes a new one, from the promoted primary.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._waiting: list[_Waiting] = []
        self._sending: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        # The client's socket timeout, applied here to the round trip as a whole: the held
        # connection has none of its own (with one, redis-py runs every write as a task of
        # its own, to time it; that task costs more than the write).
        self._timeout = client.connection_pool.connection_kwargs.get("socket_timeout")

    async def run(self, runs: Sequence[ScriptRun]) -> list[Any]:
        """The replies of ``runs``, in order, run one after the other in the same pipeline; a
        script's error is its reply (a ``redis.ResponseError``), not raised, so the caller
        knows which of its calls took effect.

        A script Redis does not know (its script cache is empty after a restart) is run
        again on its own, through ``AsyncScript``, which loads it. A caller cancelled before
        its pipeline goes out is left out of it.
        """
        waiting = _Waiting(runs)
        self._waiting.append(waiting)
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_all())
        replies = await waiting.replies
        return [
            await _loaded(reply, script, call)
            for reply, (script, call) in zip(replies, runs, strict=True)
        ]

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send([w for w in batch if not w.replies.done()])
        finally:
            self._sending = None
            for waiting in self._waiting:  # only when cancelled itself (the loop shuts down)
                waiting.replies.cancel()
            self._waiting = []

    async def _send(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        commands = [
            ("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
            for waiting in batch
            for script, call in waiting.runs
        ]
        try:
            connection = await self._current_connection()
        except Exception as exc:  # no connection to be had: Redis unreachable
            _fail(batch, exc)
            return
        try:
            replies = await _round_trip(connection, commands, self._timeout)
        except Exception as exc:  # Redis unreachable: each caller decides what to do about it
            await self._drop(connection)
            _fail(batch, exc)
            return
        except BaseException:  # cancelled with the loop: so are its callers
            self._connection = None
            await connection.disconnect(nowait=True)
            for waiting in batch:
                waiting.replies.cancel()
            raise
        _answer(batch, replies)

    async def _current_connection(self) -> AbstractConnection:
        pool = self._client.connection_pool
        connection = self._connection
        if (
            isinstance(connection, Connection)
            and isinstance(pool, SentinelConnectionPool)
            # (redis-py's async owns_connection cannot be called: it calls a missing super.)
            and pool.master_address != (connection.host, connection.port)
        ):
            await self._drop(connection)
            connection = None
        if connection is None:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py: unannotated
            connection.socket_timeout = None  # this round trip is timed whole (``_timeout``)
            self._connection = connection
        return connection

    async def _drop(self, connection: AbstractConnection) -> None:
        """A connection whose replies are in doubt is closed and given back to the pool."""
        self._connection = None
        await connection.disconnect(nowait=True)
        connection.socket_timeout = self._timeout  # the pool's other users time their own
        await self._client.connection_pool.release(connection)


async def _round_trip(
    connection: AbstractConnection, commands: Sequence[Sequence[Any]], timeout: float | None
) -> list[Any]:
    """``commands`` written at once, and their replies, within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
            return [await _reply(connection) for _ in commands]
    except TimeoutError:
        raise RedisTimeoutError("Timeout reading from Redis") from None


async def _reply(connection: AbstractConnection) -> Any:
    """The next reply; an error reply is the reply (a script's error), not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:
        return exc


def _fail(batch: list[_Waiting], exc: Exception) -> None:
    for waiting in batch:
        if not waiting.replies.done():
            waiting.replies.set_exception(exc)


def _answer(batch: list[_Waiting], replies: list[Any]) -> None:
    """Hands each caller its own replies: the pipeline's, in the order the calls went in."""
    remaining = iter(replies)
    for waiting in batch:
        mine = [next(remaining) for _ in waiting.runs]
        if not waiting.replies.done():  # a caller cancelled meanwhile is not answered
            waiting.replies.set_result(mine)


async def _loaded(reply: Any, script: AsyncScript, call: ScriptCall) -> Any:
    if not isinstance(reply, NoScriptError):
        return reply
    try:
        return await script(keys=call.keys, args=call.args)
    except ResponseError as exc:
        return exc
