"""The producer and operator side of the records: create, read, list, retry, purge."""

from __future__ import annotations

import heapq
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis

from config.errors import DeliveryNotFoundError, InvalidInputError, NotRetryableError
from worker.message import OutgoingMessage
from worker.records.codec import as_text, decode_record, encode_recipients, new_record_fields
from worker.records.keys import (
    OWNED_IDEMPOTENCY_PREFIX,
    attempts_key,
    idempotency_key,
    key_deliveries_key,
    record_key,
    status_index_key,
)
from worker.records.model import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    DeliveryRecord,
    DeliveryStatus,
    Priority,
    RecipientState,
)
from worker.records.scripts import (
    CANCEL,
    CREATE,
    PURGE,
    TRANSITION,
    Cancelled,
    Created,
    Refused,
    ScriptCall,
    cancel_call,
    create_call,
    decode_cancel,
    decode_create,
    decode_purge,
    decode_transition,
    purge_call,
    transition_call,
)

__all__ = ["ALL_OWNERS", "CancelOutcome", "DeliveryStore", "NewDelivery", "Page"]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    message: OutgoingMessage
    idempotency_key: str | None = None
    priority: Priority = Priority.NORMAL
    created_by: str | None = None  # the API key's name, when one sent it
    # Whose idempotency keys ``idempotency_key`` is among: an API key's own (its name), or
    # None for the shared ones (the CLI, Python code, a schedule run's e-mails).
    idempotency_owner: str | None = None
    # When to send it (unix time, in the future): stored ``scheduled`` until then.
    send_at: float | None = None


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What a cancel did to one delivery: ``cancelled``, or why not (its status then)."""

    id: str
    cancelled: bool
    status: DeliveryStatus
    reason: str | None = None


ALL_OWNERS = "*"
"""``idempotency_owner`` of a bulk cancel that reaches every key's deliveries (an admin's)."""


@dataclass(frozen=True, slots=True)
class Page:
    records: list[DeliveryRecord]
    next_cursor: str | None  # None on the last page


@dataclass(frozen=True, slots=True, order=True)
class _Position:
    """A place in newest-first order: the index score, then the id (ties of one score are
    ordered by id, as Redis orders them). A cursor is the last position a page showed."""

    score: float
    id: str

    def __str__(self) -> str:
        return f"{self.score!r}_{self.id}"

    @classmethod
    def parse(cls, text: str) -> _Position:
        score, _, delivery_id = text.rpartition("_")
        try:
            position = cls(float(score), delivery_id)
            if not _ID.match(delivery_id) or not math.isfinite(position.score):
                raise ValueError(text)
            return position
        except ValueError:
            raise InvalidInputError("not a cursor this API gave out", field="cursor") from None


_ID = re.compile(r"^[0-9a-f]{1,64}$")
# Records a producer's filtered page reads at most, so that one request stays bounded even
# when few of its deliveries match; the page then ends early with a cursor to go on.
_MAX_SCANNED = 1000
# Ids of the cursor's exact score read from an index that no longer holds the cursor's id.
_MAX_TIES = 10_000


class DeliveryStore:
    """Synchronous access to delivery records for producers, the CLI and the HTTP API."""

    def __init__(self, client: redis.Redis, *, retention_seconds: int) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._create = client.register_script(CREATE)
        self._transition = client.register_script(TRANSITION)
        self._purge = client.register_script(PURGE)
        self._cancel = client.register_script(CANCEL)

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
                    created_by=delivery.created_by,
                    idempotency_owner=delivery.idempotency_owner,
                    send_at=delivery.send_at,
                ),
                idempotency=delivery.idempotency_key,
                idempotency_ttl_seconds=self._retention_seconds,
                created_by=delivery.created_by,
                idempotency_owner=delivery.idempotency_owner,
                send_at=delivery.send_at,
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

    def used_idempotency_keys(
        self, keys: Sequence[str | None], *, owner: str | None = None
    ) -> list[bool]:
        """Whether each idempotency key (among ``owner``'s, or the shared ones) already names
        a delivery, in one round trip; None is never used."""
        pipe = self._redis.pipeline(transaction=False)
        asked = [key for key in keys if key is not None]
        for key in asked:
            pipe.exists(idempotency_key(key, owner))
        found = iter(pipe.execute() if asked else [])
        return [bool(next(found)) if key is not None else False for key in keys]

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
        self,
        status: DeliveryStatus | None = None,
        limit: int = 50,
        after: str | None = None,
        *,
        created_by: str | None = None,
    ) -> Page:
        """One page of records, newest first; ``after`` is the previous page's ``next_cursor``.

        Without ``created_by``, newest status change first. With it, only the deliveries
        that API key created, newest first; a status filter is then applied to them.
        """
        position = _Position.parse(after) if after else None
        if created_by is None:
            statuses = [status] if status else list(DeliveryStatus)
            indexes = [status_index_key(each) for each in statuses]
            wanted = None
        else:
            indexes = [key_deliveries_key(created_by)]
            wanted = status
        records: list[DeliveryRecord] = []
        scanned = 0
        while len(records) < limit and scanned < _MAX_SCANNED:
            rows = self._rows_after(indexes, position, limit - len(records))
            if not rows:
                return Page(records, None)
            scanned += len(rows)
            position = rows[-1]
            records += self._read_matching([row.id for row in rows], wanted, indexes)
        return Page(records, str(position) if position else None)

    def _read_matching(
        self, delivery_ids: list[str], status: DeliveryStatus | None, indexes: list[str]
    ) -> list[DeliveryRecord]:
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hgetall(record_key(delivery_id))
        found = []
        for delivery_id, fields in zip(delivery_ids, pipe.execute(), strict=True):
            # Expired records leave their id in an index; this is where it is noticed.
            if not fields:
                self.forget_ids([delivery_id], also_in=indexes)
                continue
            record = decode_record(delivery_id, fields)
            if status is None or record.status is status:
                found.append(record)
        return found

    def _rows_after(
        self, indexes: list[str], position: _Position | None, count: int
    ) -> list[_Position]:
        """The next ``count`` positions after ``position`` (newest first) over ``indexes``.

        In the index that still holds the cursor's id at its score, the page goes on from its
        rank: ``count`` ids read, however many share that score (the sweeper stamps up to
        10,000 at once). Elsewhere the ids of exactly that score are read too, at most
        ``_MAX_TIES``: a cursor costs about what its page costs, whatever it says.
        """
        if position is None:
            pipe = self._redis.pipeline(transaction=False)
            for index in indexes:
                pipe.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
            newest = pipe.execute()
            return heapq.nlargest(
                count, (_Position(score, as_text(raw)) for rows in newest for raw, score in rows)
            )
        pipe = self._redis.pipeline(transaction=False)
        for index in indexes:
            pipe.zscore(index, position.id)
            pipe.zrevrank(index, position.id)
        found = pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for at, index in enumerate(indexes):
            score, rank = found[2 * at], found[2 * at + 1]
            if score == position.score and rank is not None:
                pipe.zrevrange(index, rank + 1, rank + count, withscores=True)
            else:
                tied = repr(position.score)
                pipe.zrangebyscore(index, tied, tied, start=0, num=_MAX_TIES)
                below = f"({position.score!r}"
                pipe.zrevrangebyscore(index, below, "-inf", start=0, num=count, withscores=True)
        replies = iter(pipe.execute())
        rows: list[_Position] = []
        for at in range(len(indexes)):
            score, rank = found[2 * at], found[2 * at + 1]
            if not (score == position.score and rank is not None):
                rows += (
                    _Position(position.score, delivery_id)
                    for raw in next(replies)
                    if (delivery_id := as_text(raw)) < position.id
                )
            rows += (_Position(score, as_text(raw)) for raw, score in next(replies))
        return heapq.nlargest(count, rows)

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

    def cancel(self, delivery_id: str) -> CancelOutcome:
        """Withdraw a delivery that nothing is sending; see ``scripts.CANCEL``."""
        call = cancel_call(
            delivery_id,
            retention_seconds=self._retention_seconds,
            reason="cancelled before it was sent",
        )
        match decode_cancel(self._cancel(keys=call.keys, args=call.args)):
            case Cancelled():
                return CancelOutcome(delivery_id, True, DeliveryStatus.CANCELLED)
            case Refused(status=status):
                return CancelOutcome(delivery_id, False, status, _not_cancellable(status))
        raise DeliveryNotFoundError(f"no delivery with id {delivery_id!r}")

    def ids_by_idempotency_prefix(self, prefix: str, *, owner: str | None) -> list[str]:
        """The deliveries whose idempotency key starts with ``prefix``, among ``owner``'s keys
        (an API key's name), the shared ones (None), or every one (``ALL_OWNERS``)."""
        literal = _glob_escaped(prefix)
        if owner != ALL_OWNERS:
            patterns = [idempotency_key(literal, owner) + "*"]
        else:
            patterns = [idempotency_key(literal) + "*", f"{OWNED_IDEMPOTENCY_PREFIX}*:{literal}*"]
        names = [
            as_text(name)
            for pattern in patterns
            for name in self._redis.scan_iter(match=pattern, count=1000)
        ]
        # "*:" may also match within a key that holds ':': only keys that start with the
        # prefix count (an owner's name holds no ':', so the key proper starts after the first).
        wanted = [
            name
            for name in names
            if not name.startswith(OWNED_IDEMPOTENCY_PREFIX)
            or name.removeprefix(OWNED_IDEMPOTENCY_PREFIX).partition(":")[2].startswith(prefix)
        ]
        if not wanted:
            return []
        ids = self._redis.mget(wanted)
        return sorted({as_text(raw) for raw in ids if raw is not None})

    def mark_unqueued(self, delivery_id: str, reason: str) -> None:
        """Record that a stored delivery could not be handed to the broker, so it is not lost."""
        self._run_transition(
            transition_call(
                delivery_id,
                now=time.time(),
                guard=("status", DeliveryStatus.QUEUED.value),
                status=DeliveryStatus.FAILED,
                expire_seconds=self._retention_seconds,
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

    def forget_ids(self, delivery_ids: list[str], *, also_in: Sequence[str] = ()) -> None:
        """Drop ids from every status index, and from ``also_in`` (their records are gone)."""
        if not delivery_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for index in {*map(status_index_key, DeliveryStatus), *also_in}:
            pipe.zrem(index, *delivery_ids)
        pipe.execute()

    def _run_transition(self, call: ScriptCall) -> bool:
        return decode_transition(self._transition(keys=call.keys, args=call.args))


def _not_cancellable(status: DeliveryStatus) -> str:
    if status is DeliveryStatus.SENDING:
        return "it is being sent right now; its outcome will be recorded as usual"
    return f"it is already {status.value.replace('_', ' ')}"


def _glob_escaped(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
