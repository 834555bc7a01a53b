"""The real worker runtime driven by a test: what its sweeper publishes is collected, and the
test delivers it when it says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from tasks.context import OutboxContext
from worker.deliver import JobOutcome
from worker.records import Priority
from worker.runtime import WorkerRuntime

FINAL = frozenset(
    {
        JobOutcome.SENT,
        JobOutcome.PARTIALLY_SENT,
        JobOutcome.FAILED,
        JobOutcome.CANCELLED,
        JobOutcome.CAPTURED,
    }
)


class CollectingQueue:
    """Stands in for the broker's queue: keeps the ids the sweeper publishes; none waits."""

    def __init__(self) -> None:
        self._published: list[str] = []
        self.priorities: dict[str, Priority] = {}  # the queue each id was last published to
        self._lock = threading.Lock()

    def publish(self, delivery_ids: Sequence[str], priority: Priority) -> None:
        with self._lock:
            self._published += delivery_ids
            self.priorities.update(dict.fromkeys(delivery_ids, priority))

    def oldest_published(self) -> float | None:
        return None

    def take(self, delivery_id: str) -> bool:
        """Whether ``delivery_id`` was published (and forget that it was)."""
        with self._lock:
            if delivery_id not in self._published:
                return False
            self._published = [i for i in self._published if i != delivery_id]
            return True


class InProcessWorker:
    """WorkerRuntime whose sweeper publishes into a list the test drains."""

    def __init__(self, context: OutboxContext) -> None:
        self.queue = CollectingQueue()
        self.runtime = WorkerRuntime(
            context.settings,
            location=context.redis_location,
            box=context.secret_box,
            task_queue=self.queue,
        )

    def deliver(self, *delivery_ids: str) -> list[JobOutcome]:
        return self.runtime.deliver(delivery_ids)

    def settle(
        self,
        delivery_id: str,
        *,
        timeout: float = 30,
        before_retry: Callable[[], object] | None = None,
    ) -> str:
        """Deliver, then each time the sweeper publishes the delivery again (its retry is
        due), deliver it again, until it is final."""
        outcome = self.deliver(delivery_id)[0]
        deadline = time.monotonic() + timeout
        while outcome not in FINAL:
            while not self.queue.take(delivery_id):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{delivery_id} still {outcome} after {timeout} s")
                time.sleep(0.02)
            if before_retry is not None:
                before_retry()
            outcome = self.deliver(delivery_id)[0]
        return outcome

    def close(self) -> None:
        self.runtime.close()
