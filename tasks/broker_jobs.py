"""The send queues read by a pool process itself: its next job, taken as Celery's consumer would."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from celery import Celery

from tasks.queues import QUEUES
from worker.deliver import JobOutcome
from worker.lookahead import TakenJob

__all__ = ["BrokerJobs", "job_result"]

log = logging.getLogger(__name__)

# kombu's connection, virtual channel and its messages: kombu leaves their methods unannotated.
KombuConnection = Any
KombuMessage = Any


def job_result(outcomes: Sequence[JobOutcome]) -> str:
    """A job's result as Flower shows it: its statuses only (``sent=49 retrying=1``)."""
    if len(outcomes) == 1:
        return outcomes[0].value
    counts = Counter(outcome.value for outcome in outcomes)
    return " ".join(f"{outcome}={count}" for outcome, count in sorted(counts.items()))


class BrokerJobs:
    """The broker's send queues, in the order the worker consumes them (high first).

    A job taken here is held in kombu's unacknowledged set, as a job Celery's consumer
    reserved would be: acknowledged once done, put back on its queue when it could not be
    run, and restored to its queue by the broker should the process die holding it (once
    its visibility timeout passes; the sweeper republishes its deliveries before that). It
    is reported to Flower as Celery reports the jobs it runs: received, started, succeeded.
    """

    def __init__(self, app: Celery, send_task: str) -> None:
        self._app = app
        self._send_task = send_task
        self._lock = threading.Lock()  # kombu's channel is not for two threads at once
        self._connection: KombuConnection | None = None
        self.hostname: str | None = None  # the worker's node name, once a job told it

    def take(self) -> TakenJob | None:
        with self._lock:
            channel = self._channel()
            for queue in QUEUES.values():
                message = channel.basic_get(queue, no_ack=False)
                if message is not None:
                    return self._job(message)
        return None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.release()
                self._connection = None

    def _channel(self) -> Any:
        if self._connection is None:
            self._connection = self._app.connection_for_read()
        return self._connection.default_channel

    def _job(self, message: KombuMessage) -> TakenJob | None:
        headers: dict[str, Any] = message.headers or {}
        ids = _delivery_ids(message) if headers.get("task") == self._send_task else None
        if ids is None:
            # Not a send job outbox published: back to its queue for Celery's consumer.
            message.reject(requeue=True)
            return None
        job = _BrokerJob(self, message, ids, str(headers.get("id", "")))
        job.report("task-received", name=self._send_task, args=repr([ids]), kwargs="{}")
        job.report("task-started", pid=os.getpid())
        return job

    def settle(self, message: KombuMessage, *, requeue: bool) -> None:
        """Acknowledge a job taken here, or put it back on its queue."""
        with self._lock:
            if requeue:
                message.reject(requeue=True)
            else:
                message.ack()

    def report(self, event: str, **fields: Any) -> None:
        """Send a task event, as Celery does for the jobs it runs (Flower shows them)."""
        if self.hostname is None or self._connection is None:
            return
        try:
            with self._app.events.default_dispatcher(hostname=self.hostname) as events:
                events.send(event, **fields)
        except Exception as exc:  # events are for watching: never a reason to fail a job
            log.debug("could not send %s (%s)", event, type(exc).__name__)


class _BrokerJob:
    def __init__(
        self, jobs: BrokerJobs, message: KombuMessage, ids: list[str], task_id: str
    ) -> None:
        self._jobs = jobs
        self._message = message
        self._task_id = task_id
        self._started = time.monotonic()
        self.delivery_ids: Sequence[str] = ids

    def done(self, outcomes: Sequence[JobOutcome]) -> None:
        self._jobs.settle(self._message, requeue=False)
        self.report(
            "task-succeeded",
            result=repr(job_result(outcomes)),
            runtime=time.monotonic() - self._started,
        )

    def give_back(self) -> None:
        self._jobs.settle(self._message, requeue=True)
        self.report("task-retried", exception="job interrupted; given back to its queue")

    def report(self, event: str, **fields: Any) -> None:
        self._jobs.report(event, uuid=self._task_id, **fields)


def _delivery_ids(message: KombuMessage) -> list[str] | None:
    """The ids a send job carries (Celery's message protocol 2: ``[args, kwargs, embed]``);
    None for a body that is not one."""
    try:
        args = message.decode()[0]
    except Exception:  # whatever a foreign body raises, it is not a send job
        return None
    ids = args[0] if isinstance(args, list) and len(args) == 1 else None
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return ids
    return None
