"""Schedules in Redis: their notification settings, their last run's status, and each run's
result (kept for the retention, so a run posted again is answered, not sent again)."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from config.errors import InvalidInputError, ScheduleNotFoundError
from config.redis_keys import SCHEDULE, SCHEDULE_LAST, SCHEDULE_RUN, SCHEDULES
from tasks.reports.model import SCHEDULE_ID_PATTERN, RunStatus
from tasks.reports.rules import Notification
from worker.records.codec import as_text

__all__ = ["ScheduleStore"]

_INDEX_KEY = SCHEDULES.pattern

# Records a run's result once and, in the same step, makes its status the schedule's last
# unless a run that finished later is known already: a run posted twice, two posts of it
# racing, or an older run posted late never move "previous" backwards.
# KEYS: run key, last-status hash. ARGV: result JSON, retention seconds, status, finished_at.
_RECORD_RUN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return 0
end
local known = redis.call('HGET', KEYS[2], 'finished_at')
if (not known) or tonumber(ARGV[4]) >= tonumber(known) then
    redis.call('HSET', KEYS[2], 'status', ARGV[3], 'finished_at', ARGV[4])
end
return 1
"""


def _checked(schedule_id: str) -> str:
    if not re.match(SCHEDULE_ID_PATTERN, schedule_id):
        raise InvalidInputError(
            f"{schedule_id!r} is not a schedule id: 1 to 100 of A-Z, a-z, 0-9, '.', '_', '-'",
            field="schedule_id",
        )
    return schedule_id


def _notification_key(schedule_id: str) -> str:
    return SCHEDULE.name(schedule_id=schedule_id)


def _last_status_key(schedule_id: str) -> str:
    return SCHEDULE_LAST.name(schedule_id=schedule_id)


def _run_key(schedule_id: str, run_id: str) -> str:
    return SCHEDULE_RUN.name(schedule_id=schedule_id, run_id=run_id)


class ScheduleStore:
    def __init__(self, client: redis.Redis, *, retention_seconds: int) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._record_run = client.register_script(_RECORD_RUN)

    def save(self, schedule_id: str, notification: Notification) -> None:
        _checked(schedule_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_notification_key(schedule_id), notification.model_dump_json())
        pipe.sadd(_INDEX_KEY, schedule_id)
        pipe.execute()

    def get(self, schedule_id: str) -> Notification:
        raw = self._redis.get(_notification_key(_checked(schedule_id)))
        if raw is None:
            raise ScheduleNotFoundError(
                f"no notification settings for schedule {schedule_id!r}; "
                f"set them with `outbox schedules set {schedule_id} ...`"
            )
        return Notification.model_validate_json(raw)

    def delete(self, schedule_id: str) -> None:
        _checked(schedule_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(_notification_key(schedule_id), _last_status_key(schedule_id))
        pipe.srem(_INDEX_KEY, schedule_id)
        deleted, _ = pipe.execute()
        if not deleted:
            raise ScheduleNotFoundError(f"no notification settings for schedule {schedule_id!r}")

    def all(self) -> dict[str, Notification]:
        """Every schedule's notification settings, by id, sorted."""
        ids = sorted(as_text(raw) for raw in self._redis.smembers(_INDEX_KEY))
        documents = self._redis.mget([_notification_key(i) for i in ids]) if ids else []
        return {
            schedule_id: Notification.model_validate_json(document)
            for schedule_id, document in zip(ids, documents, strict=True)
            if document is not None
        }

    def last_status(self, schedule_id: str) -> RunStatus | None:
        """The status of the run that finished last of those posted."""
        raw = self._redis.hget(_last_status_key(schedule_id), "status")
        return RunStatus(as_text(raw)) if raw is not None else None

    def recorded_run(self, schedule_id: str, run_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(_run_key(schedule_id, run_id))
        return json.loads(raw) if raw is not None else None

    def record_run(
        self,
        schedule_id: str,
        run_id: str,
        status: RunStatus,
        finished_at: float,
        result: dict[str, Any],
    ) -> bool:
        """Keep ``result`` for the run and make ``status`` the schedule's last (unless a run
        that finished later is known); False when the run was recorded already."""
        recorded = self._record_run(
            keys=[_run_key(schedule_id, run_id), _last_status_key(schedule_id)],
            args=[json.dumps(result), self._retention_seconds, status.value, finished_at],
        )
        return bool(recorded)
