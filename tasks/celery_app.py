"""The Celery app: Redis broker, late acks, prefetch 1, events on; its one send task; and a
queue per priority, consumed in order."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu.entity import Queue

from config.redis_location import REDIS_TIMEOUT_SECONDS
from tasks.broker_jobs import BrokerJobs, job_result
from tasks.context import OutboxContext
from tasks.producer import Producer, Publisher, chunked
from tasks.queues import QUEUE, QUEUES
from worker.records import Priority
from worker.records.enqueue import QueuedTask
from worker.runtime import WorkerRuntime

__all__ = [
    "INFRASTRUCTURE_RETRY_SECONDS",
    "PUBLISHED_AT_HEADER",
    "SEND_TASK",
    "CeleryTaskQueue",
    "TaskMessages",
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
                next_jobs=self._jobs if self._context.settings.lookahead else None,
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


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EVENT_EXCHANGE = "celeryev"
_SENT_ROUTING_KEY = "task.sent"


class TaskMessages:
    """Send-task messages built here as ``celery_publisher`` makes Celery and kombu's Redis
    transport write them (protocol 2, JSON, base64 body: the same keys in the same order, the
    same values but for ids and times; the ``task-sent`` event as ``task_send_sent_event``
    publishes it), for the API to write in the same round trip as the record instead of
    through kombu (about 0.5 ms of CPU and two more round trips per publish). Build it in
    the process that uses it: it carries that process's node name. ``tests/test_producer.py``
    holds the two equal."""

    def __init__(self, app: Celery) -> None:
        self._origin = anon_nodename()
        self._pid = os.getpid()
        self._reply_to = app.thread_oid
        self._clock = app.clock
        with app.connection_for_write() as connection:
            # kombu's fanout prefix names the Redis database: "/0." for db 0.
            prefix = connection.default_channel.keyprefix_fanout
        self._event_channel = f"{prefix}{_EVENT_EXCHANGE}/{_SENT_ROUTING_KEY}"

    def for_ids(self, delivery_ids: Sequence[str], priority: Priority) -> QueuedTask:
        queue = QUEUES[priority]
        task_id = str(uuid.uuid4())
        args = [list(delivery_ids)]
        argsrepr = repr(args)
        body = json.dumps([args, {}, _EMBED]).encode()
        headers = {
            "lang": "py",
            "task": SEND_TASK,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            PUBLISHED_AT_HEADER: time.time(),
        }
        properties = {
            "correlation_id": task_id,
            "reply_to": self._reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        return QueuedTask(
            queue,
            _envelope(body, headers, properties),
            self._event_channel,
            self._sent(task_id, argsrepr, queue),
        )

    def _sent(self, task_id: str, argsrepr: str, queue: str) -> bytes:
        event = {
            "hostname": self._origin,
            "utcoffset": utcoffset(),
            "pid": self._pid,
            "clock": self._clock.forward(),
            "uuid": task_id,
            "root_id": task_id,
            "parent_id": None,
            "name": SEND_TASK,
            "args": argsrepr,
            "kwargs": "{}",
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "timestamp": time.time(),
            "type": "task-sent",
        }
        properties = {
            "delivery_mode": 1,
            "delivery_info": {"exchange": _EVENT_EXCHANGE, "routing_key": _SENT_ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        return _envelope(json.dumps(event).encode(), {"hostname": self._origin}, properties)


def _envelope(body: bytes, headers: dict[str, Any], properties: dict[str, Any]) -> bytes:
    """A message as kombu's Redis transport stores it."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    ).encode()


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
