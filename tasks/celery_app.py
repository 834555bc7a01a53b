"""The Celery app: Redis broker, late acks, prefetch 1, events on; and its one send task."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

from tasks.context import OutboxContext
from tasks.producer import Producer
from worker.runtime import WorkerRuntime

__all__ = [
    "INFRASTRUCTURE_RETRY_SECONDS",
    "QUEUE",
    "SEND_TASK",
    "celery_publisher",
    "create_celery_app",
    "producer_for",
]

log = logging.getLogger(__name__)

SEND_TASK = "outbox.send"
QUEUE = "outbox"
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
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": context.settings.visibility_timeout_seconds
        },
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
        self._pid: int | None = None

    def get(self) -> WorkerRuntime:
        if self._runtime is None or self._pid != os.getpid():
            self._runtime = WorkerRuntime(
                self._context.settings,
                redis_url=self._context.redis_location.url,
                box=self._context.secret_box,
                schedule_retry=self._schedule_retry,
            )
            self._pid = os.getpid()
        return self._runtime

    def close(self) -> None:
        if self._runtime is not None and self._pid == os.getpid():
            self._runtime.close()
            self._runtime = None

    def _schedule_retry(self, delivery_id: str, delay_seconds: float) -> None:
        self._app.send_task(SEND_TASK, args=[[delivery_id]], countdown=delay_seconds)


def _register_send_task(app: Celery, context: OutboxContext) -> None:
    runtime = _ProcessRuntime(context, app)

    @app.task(name=SEND_TASK, bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
    def send(self: Task, delivery_ids: list[str]) -> str:
        """Attempt each delivery; the result (shown in Flower) holds statuses only."""
        try:
            outcomes = [outcome.value for outcome in runtime.get().deliver(delivery_ids)]
        except Exception as exc:
            # Only infrastructure gets here (the record store or the broker unreachable);
            # every delivery's own failure is recorded on it. Run the job again: what was
            # recorded meanwhile is skipped, what was interrupted is claimed again.
            log.warning("job interrupted (%s); running it again", type(exc).__name__)
            raise self.retry(countdown=INFRASTRUCTURE_RETRY_SECONDS) from None
        if len(outcomes) == 1:
            return outcomes[0]
        return " ".join(
            f"{outcome}={count}" for outcome, count in sorted(Counter(outcomes).items())
        )

    @worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _close_runtime(**_: Any) -> None:
        runtime.close()


def celery_publisher(app: Celery) -> Callable[[Sequence[Sequence[str]]], None]:
    """Publishes chunks of delivery ids as send tasks over one broker connection."""

    def publish(chunks: Sequence[Sequence[str]]) -> None:
        with app.producer_or_acquire() as producer:
            for chunk in chunks:
                app.send_task(SEND_TASK, args=[list(chunk)], producer=producer)

    return publish


def producer_for(context: OutboxContext, app: Celery | None = None) -> Producer:
    """The producer API of a process, publishing through ``app`` (or a Celery app of its own)."""
    return Producer(
        context.deliveries,
        celery_publisher(app or create_celery_app(context)),
        message_id_domain=context.settings.message_id_domain,
        max_message_bytes=context.settings.max_message_bytes,
    )


def ping_workers(app: Celery, timeout: float = 1.0) -> list[str]:
    """The names of the workers that answered a ping within ``timeout``."""
    replies: list[dict[str, Any]] = app.control.ping(timeout=timeout) or []
    return [name for reply in replies for name in reply]
