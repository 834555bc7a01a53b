"""The worker's own CPU per e-mail: one ``WorkerRuntime`` in this process, nothing else in it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.env import BenchEnv, Figures
from bench.messages import message
from tasks.producer import Producer, chunked
from worker.records import Priority
from worker.runtime import WorkerRuntime

__all__ = ["scenario_worker_cpu"]

WARM_UP = 200  # e-mails sent first, so the sessions, scripts and caches are all set up


class _Unpublished:
    """The runtime's sweeper's queue: nothing published here reaches a broker (there is
    nothing to sweep in this run: every e-mail is delivered at once)."""

    def publish(self, delivery_ids: Sequence[str], priority: Priority) -> None:
        pass

    def oldest_published(self) -> float | None:
        return None


def _no_publish(chunks: Sequence[Sequence[str]], *, priority: Priority) -> None:
    pass  # the runtime below is handed the chunks itself


def scenario_worker_cpu(env: BenchEnv, count: int | None = None) -> Figures:
    """The worker's CPU time per e-mail (``time.process_time`` of this process) while one
    ``WorkerRuntime``, as a pool process runs it, delivers e-mails to the sink in jobs of
    50: the figure round two tracked, apart from the sink's, Redis's and Celery's CPU."""
    env.configure_smtp(env.sink)
    context = env.context
    producer = Producer(
        context.deliveries,
        _no_publish,
        message_id_domain="bench.outbox",
        max_message_bytes=context.settings.max_message_bytes,
    )
    count = count or env.options.cpu_n
    runtime = WorkerRuntime(
        context.settings,
        location=context.redis_location,
        box=context.secret_box,
        task_queue=_Unpublished(),
    )
    try:
        _deliver(runtime, producer, WARM_UP)
        seconds = _deliver(runtime, producer, count)
    finally:
        runtime.close()
    return {"worker_cpu_us_per_email": round(seconds / count * 1e6, 1)}


def _deliver(runtime: WorkerRuntime, producer: Producer, count: int) -> float:
    """CPU seconds this process spent delivering ``count`` e-mails (stored beforehand)."""
    ids = [created.id for created in producer.enqueue_many([message(n) for n in range(count)])]
    started = time.process_time()
    for chunk in chunked(ids):
        outcomes = runtime.deliver(chunk)
        if any(outcome.value != "sent" for outcome in outcomes):
            raise RuntimeError(f"not every e-mail was sent: {outcomes}")
    return time.process_time() - started
