"""The producer and operator side of the records: create, read, list, retry, purge."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis

from worker.errors import DeliveryNotFoundError, InvalidInputError, NotRetryableError
from worker.message import OutgoingMessage
from worker.records.codec import as_text, decode_record, encode_recipients, new_record_fields
from worker.records.keys import attempts_key, record_key, status_index_key
from worker.records.model import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    DeliveryRecord,
    DeliveryStatus,
    Priority,
    RecipientState,
)
from worker.records.scripts import (
    CREATE,
    PURGE,
    TRANSITION,
    Created,
    ScriptCall,
    create_call,
    decode_create,
    decode_purge,
    decode_transition,
    purge_call,
    transition_call,
)

__all__ = ["DeliveryStore", "NewDelivery", "Page"]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    message: OutgoingMessage
    idempotency_key: str | None = None
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Page:
    records: list[DeliveryRecord]
    next_cursor: str | None  # None on the last page


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where a page ended: the last score, and how many records of that score were shown."""

    score: float
    skip: int

    def __str__(self) -> str:
        return f"{self.score!r}_{self.skip}"

    @classmethod
    def parse(cls, text: str) -> _Cursor:
        try:
            score, skip = text.split("_")
            return cls(float(score), int(skip))
        except ValueError:
            raise InvalidInputError("not a cursor this API gave out", field="cursor") from None


class DeliveryStore:
    """Synchronous access to delivery records for producers, the CLI and the HTTP API."""

    def __init__(self, client: redis.Redis, *, retention_seconds: int) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._create = client.register_script(CREATE)
        self._transition = client.register_script(TRANSITION)
        self._purge = client.register_script(PURGE)

    def create_many(self, deliveries: Sequence[NewDelivery]) -> list[Created]:
        """Store queued records in one round trip; existing idempotency keys return their id."""
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for delivery in deliveries:
            call = create_call(
                delivery.id,
                now=now,
                fields=new_record_fields(
                    delivery.message,
                    created_at=now,
                    idempotency_key=delivery.idempotency_key,
                    priority=delivery.priority,
                ),
                idempotency=delivery.idempotency_key,
                idempotency_ttl_seconds=self._retention_seconds,
            )
            self._create(keys=call.keys, args=call.args, client=pipe)
        return [decode_create(reply) for reply in pipe.execute()]

    def get(self, delivery_id: str) -> DeliveryRecord:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(record_key(delivery_id))
        pipe.lrange(attempts_key(delivery_id), 0, -1)
        fields, attempts = pipe.execute()
        if not fields:
            raise DeliveryNotFoundError(f"no delivery with id {delivery_id!r}")
        return decode_record(delivery_id, fields, attempts)

    def statuses(self, delivery_ids: Sequence[str]) -> list[DeliveryStatus | None]:
        """Each delivery's status (None for an unknown id), in one round trip."""
        if not delivery_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hget(record_key(delivery_id), "status")
        return [DeliveryStatus(as_text(raw)) if raw else None for raw in pipe.execute()]

    def ids_with_status(self, status: DeliveryStatus) -> list[str]:
        return [as_text(raw) for raw in self._redis.zrange(status_index_key(status), 0, -1)]

    def recent(self, status: DeliveryStatus | None = None, limit: int = 50) -> list[DeliveryRecord]:
        """The most recently updated records, newest first, optionally of one status."""
        return self.page(status, limit).records

    def page(
        self, status: DeliveryStatus | None = None, limit: int = 50, after: str | None = None
    ) -> Page:
        """One page of records, newest status change first; ``after`` is the previous page's
        ``next_cursor``. Ties (a batch enqueued at one instant) are ordered by id."""
        cursor = _Cursor.parse(after) if after else None
        skip = cursor.skip if cursor else 0
        newest_first = self._newest(status, limit + skip, cursor.score if cursor else None)
        if cursor is not None:
            ties = [row for row in newest_first[:skip] if row[0] == cursor.score]
            newest_first = newest_first[len(ties) :]
        rows = newest_first[:limit]
        pipe = self._redis.pipeline(transaction=False)
        for _, delivery_id in rows:
            pipe.hgetall(record_key(delivery_id))
        records = []
        for (_, delivery_id), fields in zip(rows, pipe.execute(), strict=True):
            # Expired records leave their id in an index; this is where it is noticed.
            if fields:
                records.append(decode_record(delivery_id, fields))
            else:
                self.forget_ids([delivery_id])
        next_cursor = None
        if len(rows) == limit and rows:
            last_score = rows[-1][0]
            same = sum(1 for score, _ in rows if score == last_score)
            carried = skip if cursor is not None and cursor.score == last_score else 0
            next_cursor = str(_Cursor(last_score, same + carried))
        return Page(records, next_cursor)

    def _newest(
        self, status: DeliveryStatus | None, count: int, at_most: float | None
    ) -> list[tuple[float, str]]:
        statuses = [status] if status else list(DeliveryStatus)
        pipe = self._redis.pipeline(transaction=False)
        for each in statuses:
            pipe.zrevrangebyscore(
                status_index_key(each),
                "+inf" if at_most is None else repr(at_most),
                "-inf",
                start=0,
                num=count,
                withscores=True,
            )
        return heapq.nlargest(
            count, ((score, as_text(raw)) for rows in pipe.execute() for raw, score in rows)
        )

    def reset_for_retry(self, delivery_id: str) -> DeliveryRecord:
        """Queue a failed (or partially sent) delivery again: its failed recipients become pending.

        Attempts start counting afresh, so a retried delivery gets the full retry budget.
        """
        record = self.get(delivery_id)
        if record.status not in RETRYABLE_STATUSES:
            raise NotRetryableError(
                f"delivery {delivery_id} is {record.status.value}; only failed or partially "
                "sent deliveries can be retried"
            )
        recipients = tuple(
            replace(r, status=RecipientState.PENDING, code=None, reply=None)
            if r.status is RecipientState.FAILED
            else r
            for r in record.recipients
        )
        applied = self._run_transition(
            transition_call(
                delivery_id,
                now=time.time(),
                guard=("status", record.status.value),
                status=DeliveryStatus.QUEUED,
                expire_seconds=0,
                due_at=None,
                fields={
                    "recipients": encode_recipients(recipients),
                    "retry_base": str(record.attempt_count),
                    "last_error": "",
                    "next_attempt_at": "",
                },
            )
        )
        if not applied:
            raise NotRetryableError(f"delivery {delivery_id} changed meanwhile; try again")
        return replace(record, status=DeliveryStatus.QUEUED, recipients=recipients)

    def mark_unqueued(self, delivery_id: str, reason: str) -> None:
        """Record that a stored delivery could not be handed to the broker, so it is not lost."""
        self._run_transition(
            transition_call(
                delivery_id,
                now=time.time(),
                guard=("status", DeliveryStatus.QUEUED.value),
                status=DeliveryStatus.FAILED,
                expire_seconds=self._retention_seconds,
                due_at=None,
                fields={"last_error": reason},
            )
        )

    def purge(self, older_than_seconds: float) -> int:
        """Delete final records last updated before the cutoff; returns how many went."""
        cutoff = time.time() - older_than_seconds
        doomed: list[str] = []
        for status in FINAL_STATUSES:
            doomed += map(
                as_text, self._redis.zrangebyscore(status_index_key(status), "-inf", cutoff)
            )
        if not doomed:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in doomed:
            call = purge_call(delivery_id, cutoff=cutoff)
            self._purge(keys=call.keys, args=call.args, client=pipe)
        results = [decode_purge(reply) for reply in pipe.execute()]
        # Ids whose records had already expired linger in the indexes: drop them too.
        self.forget_ids(
            [i for i, result in zip(doomed, results, strict=True) if result.already_gone]
        )
        return sum(result.deleted for result in results)

    def forget_ids(self, delivery_ids: list[str]) -> None:
        """Drop ids from every status index (their records are gone)."""
        if not delivery_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for status in DeliveryStatus:
            pipe.zrem(status_index_key(status), *delivery_ids)
        pipe.execute()

    def _run_transition(self, call: ScriptCall) -> bool:
        return decode_transition(self._transition(keys=call.keys, args=call.args))
