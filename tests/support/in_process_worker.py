"""The real worker runtime driven by a test: retries are collected, then run when the test says."""

from __future__ import annotations

import time
from collections.abc import Callable

from tasks.context import OutboxContext
from worker.deliver import JobOutcome
from worker.runtime import WorkerRuntime


class InProcessWorker:
    """WorkerRuntime with its retry scheduler replaced by a list the test drains."""

    def __init__(self, context: OutboxContext) -> None:
        self.scheduled: list[tuple[str, float]] = []
        self.runtime = WorkerRuntime(
            context.settings,
            redis_url=context.redis_location.url,
            box=context.secret_box,
            schedule_retry=lambda delivery_id, delay: self.scheduled.append((delivery_id, delay)),
        )

    def deliver(self, *delivery_ids: str) -> list[JobOutcome]:
        return self.runtime.deliver(delivery_ids)

    def settle(
        self,
        delivery_id: str,
        *,
        rounds: int = 20,
        before_retry: Callable[[], object] | None = None,
        honour_delays: bool = False,
    ) -> str:
        """Deliver, then run each retry the runtime scheduled (at once, or after its delay)."""
        status = self.deliver(delivery_id)[0]
        for _ in range(rounds):
            due = [entry for entry in self.scheduled if entry[0] == delivery_id]
            if not due:
                return status
            self.scheduled = [entry for entry in self.scheduled if entry[0] != delivery_id]
            if honour_delays:
                time.sleep(max(delay for _, delay in due))
            if before_retry is not None:
                before_retry()
            status = self.deliver(delivery_id)[0]
        raise AssertionError(f"{delivery_id} still retrying after {rounds} rounds ({status})")

    def close(self) -> None:
        self.runtime.close()
