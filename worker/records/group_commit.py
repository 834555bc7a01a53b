"""Script calls of concurrent deliveries sent to Redis together, one pipeline per round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

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

    A busy process thus pays one round trip for several deliveries' claims and outcomes
    (redis-py spends about 100 us of CPU per round trip, more than Redis runs the scripts
    for), and an idle one waits for nothing: a call with no pipeline in flight goes at once.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._waiting: list[_Waiting] = []
        self._sending: asyncio.Task[None] | None = None

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
                await _send(self._client, [w for w in batch if not w.replies.done()])
        finally:
            self._sending = None
            for waiting in self._waiting:  # only when cancelled itself (the loop shuts down)
                waiting.replies.cancel()
            self._waiting = []


async def _send(client: aioredis.Redis, batch: list[_Waiting]) -> None:
    if not batch:
        return
    pipe = client.pipeline(transaction=False)
    for waiting in batch:
        for script, call in waiting.runs:
            pipe.evalsha(script.sha, len(call.keys), *call.keys, *call.args)
    try:
        replies = await pipe.execute(raise_on_error=False)
    except Exception as exc:  # Redis unreachable: each caller decides what to do about it
        _fail(batch, exc)
        return
    except BaseException:  # cancelled with the loop: so are its callers
        for waiting in batch:
            waiting.replies.cancel()
        raise
    _answer(batch, replies)


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
