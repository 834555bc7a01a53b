"""The broker queue of each priority, in the order workers take from them."""

from __future__ import annotations

from worker.records import Priority

__all__ = ["QUEUE", "QUEUES"]

QUEUE = "outbox"  # the normal priority's queue; its name predates priorities
# In the order workers take from them: kombu's Redis transport, with the "priority" queue
# order strategy, asks BRPOP for these lists in this order every time, so a waiting high task
# is always taken first (round robin, its default, would alternate between them). Prefetch 1
# bounds what a worker already holds when a high task arrives: one task per process.
QUEUES = {Priority.HIGH: f"{QUEUE}.high", Priority.NORMAL: QUEUE, Priority.LOW: f"{QUEUE}.low"}
