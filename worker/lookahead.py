"""No idle lanes between jobs: a process takes its next job itself while a job's last sends run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from worker.deliver import JobOutcome

__all__ = ["JobSource", "Lookahead", "TakenJob"]

log = logging.getLogger(__name__)

# Runs a job's ids on the process's lanes, calling back once its last id is handed out.
RunJob = Callable[[Sequence[str], Callable[[], None]], Awaitable[list[JobOutcome]]]


class TakenJob(Protocol):
    """A job taken off its queue and held there unacknowledged until it is done."""

    @property
    def delivery_ids(self) -> Sequence[str]: ...

    def done(self, outcomes: Sequence[JobOutcome]) -> None:
        """Every id is recorded: acknowledge the job (blocking)."""

    def give_back(self) -> None:
        """Put the job back on its queue, to be run again (blocking)."""


class JobSource(Protocol):
    """The queues the process's jobs come from, read by the process itself."""

    def take(self) -> TakenJob | None:
        """The next waiting job, in the order the queues are consumed; None when none waits
        (blocking)."""


class Lookahead:
    """Keeps a process's lanes busy across the end of its jobs.

    A job hands its ids to the process's lanes one by one; once it has handed out its last,
    the lanes that finish find nothing more to do until the next job arrives (a prefork pool
    process is given its next job only after the current one returned, and a job returns only
    once every id in it is recorded). So when a job has handed out its last id, the next
    waiting job is taken off the queue here and its ids go to the lanes as they free up; it is
    acknowledged only once every one of its ids is recorded, as every job is, and put back on
    its queue if it could not be run. At most one job taken this way is still handing out
    ids at any time: beside the job Celery gave it, a process holds at most one job whose
    ids are not all on its lanes yet.
    """

    def __init__(self, source: JobSource, run: RunJob) -> None:
        self._source = source
        self._run = run
        self._taking = False
        self._closing = False
        self._jobs: set[asyncio.Task[None]] = set()

    def job_drained(self) -> None:
        """A job has handed out its last id: take the next one, unless one taken here is
        still handing out its own (or the process is shutting down)."""
        if self._taking or self._closing:
            return
        self._taking = True
        job = asyncio.create_task(self._take_and_run())
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def finish(self) -> None:
        """Take nothing more, and wait until every job taken here is done and acknowledged."""
        self._closing = True
        while self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    async def _take_and_run(self) -> None:
        try:
            job = await asyncio.to_thread(self._source.take)
        except Exception as exc:  # the broker unreachable: the next job's end asks again
            log.warning("could not take the next job from the queue (%s)", type(exc).__name__)
            job = None
        if job is None:
            self._taking = False
            return
        drained = False

        def handed_out() -> None:
            nonlocal drained
            drained = True
            self._taking = False
            self.job_drained()

        try:
            outcomes = await self._run(job.delivery_ids, handed_out)
        except Exception as exc:
            # As a job Celery runs is retried: what was recorded meanwhile is skipped then.
            log.warning("job interrupted (%s); giving it back to its queue", type(exc).__name__)
            if not drained:
                self._taking = False
            await _settle(job.give_back)
            return
        await _settle(job.done, outcomes)


async def _settle(answer: Callable[..., None], *args: object) -> None:
    """Acknowledge or give back a job; when the broker cannot take it, the job stays held
    unacknowledged, and the broker restores it to its queue once its visibility timeout
    passes (its recorded ids are then skipped)."""
    try:
        await asyncio.to_thread(answer, *args)
    except Exception as exc:
        log.warning("could not settle a job with the broker (%s)", type(exc).__name__)
