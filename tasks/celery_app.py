"""The Celery app: Redis broker, late acks, prefetch 1, events on; its one send task; and a
queue per priority, consumed in order."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown
from kombu.entity import Queue

from config.redis_location import REDIS_TIMEOUT_SECONDS
from tasks.broker_jobs import BrokerJobs, job_result
from tasks.context import OutboxContext
from tasks.producer import Producer, Publisher, chunked
from tasks.queues import QUEUE, QUEUES
from worker.records import Priority
from worker.runtime import WorkerRuntime

__all__ = [
    "INFRASTRUCTURE_RETRY_SECONDS",
    "PUBLISHED_AT_HEADER",
    "SEND_TASK",
    "CeleryTaskQueue",
    "celery_publisher",
    "create_celery_app",
    "producer_for",
]

log = logging.getLogger(__name__)

SEND_TASK = "outbox.send"
PUBLISHED_AT_HEADER = "outbox_published_at"
INFRASTRUCTURE_RETRY_SECONDS = 5


def create_celery_app(context: OutboxContext) -> Celery:
    """A Celery app whose task messages carry only delivery ids, never content."""
    app = Celery("outbox", broker=context.redis_location.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        # A worker process killed mid-task: the job goes back to the queue, not to "done".
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_queues=[Queue(name) for name in QUEUES.values()],  # type: ignore[no-untyped-call]
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "queue_order_strategy": "priority",
            "visibility_timeout": context.settings.visibility_timeout_seconds,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            **context.redis_location.broker_transport_options,
        },
        broker_connection_timeout=REDIS_TIMEOUT_SECONDS,
        # A worker whose broker went away (a Redis restart) reconnects by itself, forever.
        broker_connection_max_retries=None,
        worker_hijack_root_logger=True,
    )
    _register_send_task(app, context)
    return app


class _ProcessRuntime:
    """Builds the worker runtime in the process that uses it (after fork, never before)."""

    def __init__(self, context: OutboxContext, app: Celery) -> None:
        self._context = context
        self._app = app
        self._runtime: WorkerRuntime | None = None
        self._jobs: BrokerJobs | None = None
        self._pid: int | None = None

    def get(self, hostname: str | None = None) -> WorkerRuntime:
        """The process's runtime; ``hostname``, the worker's node name the jobs it takes
        itself are reported under (a job Celery runs tells it)."""
        if self._runtime is None or self._jobs is None or self._pid != os.getpid():
            self._jobs = BrokerJobs(self._app, SEND_TASK)
            self._runtime = WorkerRuntime(
                self._context.settings,
                location=self._context.redis_location,
                box=self._context.secret_box,
                task_queue=CeleryTaskQueue(self._app, self._context.redis),
                next_jobs=self._jobs,
            )
            self._pid = os.getpid()
        if hostname is not None:
            self._jobs.hostname = hostname
        return self._runtime

    def close(self) -> None:
        if self._runtime is not None and self._pid == os.getpid():
            self._runtime.close()
            self._runtime = None
        if self._jobs is not None and self._pid == os.getpid():
            self._jobs.close()
            self._jobs = None


def _register_send_task(app: Celery, context: OutboxContext) -> None:
    runtime = _ProcessRuntime(context, app)

    @app.task(name=SEND_TASK, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
    def send(self: Task, delivery_ids: list[str]) -> str:
        """Attempt each delivery; the result (shown in Flower) holds statuses only."""
        try:
            outcomes = runtime.get(self.request.hostname).deliver(delivery_ids)
        except Exception as exc:
            # Only infrastructure gets here (the record store or the broker unreachable);
            # every delivery's own failure is recorded on it. Run the job again: what was
            # recorded meanwhile is skipped, what was interrupted is claimed again.
            log.warning("job interrupted (%s); running it again", type(exc).__name__)
            raise self.retry(countdown=INFRASTRUCTURE_RETRY_SECONDS) from None
        return job_result(outcomes)

    @worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _close_runtime(**_: Any) -> None:
        runtime.close()

    @worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _start_runtime(**_: Any) -> None:
        # Now, not at the first task: the runtime's sweeper must run even when no task comes
        # (a producer died before publishing, the broker lost its messages).
        runtime.get()

    @worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _finish_sends_on_sigterm(**_: Any) -> None:
        # systemd and most supervisors send SIGTERM to the whole process group. A pool
        # process that died of it mid-send would leave an e-mail sent but not recorded (sent
        # again later): it ignores SIGTERM, and the main process's warm shutdown decides
        # (running jobs finish and are recorded; jobs not started go back to the queue).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def celery_publisher(app: Celery) -> Publisher:
    """Publishes chunks of delivery ids as send tasks over one broker connection, into the
    queue of their priority, each stamped with when it was published (the sweeper reads the
    oldest waiting one's)."""

    def publish(chunks: Sequence[Sequence[str]], *, priority: Priority) -> None:
        headers = {PUBLISHED_AT_HEADER: time.time()}
        with app.producer_or_acquire() as producer:
            for chunk in chunks:
                app.send_task(
                    SEND_TASK,
                    args=[list(chunk)],
                    producer=producer,
                    headers=headers,
                    queue=QUEUES[priority],
                )

    return publish


class CeleryTaskQueue:
    """The send queues in the Redis broker, as the worker's sweeper uses them."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self._publish = celery_publisher(app)
        self._redis = client

    def publish(self, delivery_ids: Sequence[str], priority: Priority) -> None:
        self._publish(chunked(delivery_ids), priority=priority)

    def oldest_published(self) -> float | None:
        # kombu's Redis transport pushes on the left and pops on the right: the oldest task
        # still waiting in a queue is the last element of its list.
        pipe = self._redis.pipeline(transaction=False)
        for name in QUEUES.values():
            pipe.lindex(name, -1)
        stamps = [_published_at(raw) for raw in pipe.execute() if raw is not None]
        return min(stamps, default=None)


def _published_at(raw: bytes) -> float:
    try:
        return float(json.loads(raw)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return float("-inf")  # not stamped by outbox: assume nothing was consumed yet


def producer_for(context: OutboxContext, app: Celery | None = None) -> Producer:
    """The producer API of a process, publishing through ``app`` (or a Celery app of its own)."""
    return Producer(
        context.deliveries,
        celery_publisher(app or create_celery_app(context)),
        message_id_domain=context.settings.message_id_domain,
        max_message_bytes=context.settings.max_message_bytes,
        max_recipients=context.settings.max_recipients,
        replicas=context.replicas,
    )


def ping_workers(app: Celery, timeout: float = 1.0) -> list[str]:
    """The names of the workers that answered a ping within ``timeout``."""
    replies: list[dict[str, Any]] = app.control.ping(timeout=timeout) or []
    return [name for reply in replies for name in reply]
