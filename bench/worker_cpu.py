"""The worker's own CPU per e-mail: one ``WorkerRuntime`` in this process, nothing else in it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    """The worker's CPU time per e-mail while one ``WorkerRuntime``, as a pool process runs
    it, delivers e-mails to the sink in jobs of 50: the figure round two tracked, apart from
    the sink's, Redis's and Celery's CPU. Only the runtime's own threads are counted (its
    event loop's, and the one handing it the jobs): the benchmark's process also holds what
    earlier scenarios left running (stand-ins, output readers)."""
    env.configure_smtp(env.sink)
    context = env.context
    producer = Producer(
        context.deliveries,
        _no_publish,
        message_id_domain="bench.outbox",
        max_message_bytes=context.settings.max_message_bytes,
    )
    count = count or env.options.cpu_n
    before = {thread.native_id for thread in threading.enumerate()}
    runtime = WorkerRuntime(
        context.settings,
        location=context.redis_location,
        box=context.secret_box,
        task_queue=_Unpublished(),
    )
    try:
        _deliver(runtime, producer, WARM_UP, lambda: 0.0)
        # Its threads once it runs (its loop's, and any executor's it started).
        threads = [t.native_id for t in threading.enumerate() if t.native_id not in before]
        seconds = _deliver(runtime, producer, count, lambda: _cpu_seconds(threads))
    finally:
        runtime.close()
    return {"worker_cpu_us_per_email": round(seconds / count * 1e6, 1)}


def _deliver(
    runtime: WorkerRuntime, producer: Producer, count: int, threads_cpu: Callable[[], float]
) -> float:
    """CPU seconds the runtime's threads and this one spent delivering ``count`` e-mails
    (stored beforehand)."""
    ids = [created.id for created in producer.enqueue_many([message(n) for n in range(count)])]
    started, started_here = threads_cpu(), time.thread_time()
    for chunk in chunked(ids):
        outcomes = runtime.deliver(chunk)
        if any(outcome.value != "sent" for outcome in outcomes):
            raise RuntimeError(f"not every e-mail was sent: {outcomes}")
    return threads_cpu() - started + time.thread_time() - started_here


def _cpu_seconds(native_ids: Sequence[int | None]) -> float:
    """User and system CPU of these threads of this process so far (/proc/self/task)."""
    ticks = 0
    for native_id in native_ids:
        try:
            stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
        except OSError:
            continue  # it ended
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
