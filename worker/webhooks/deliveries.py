"""Webhook deliveries in Redis: one event for one endpoint, its status and every attempt,
changed only by the scripts here (fan-out, take under a lease, finish an attempt).

A delivery is named by its ``webhook-id``; its keys are the ``WEBHOOK_DELIVERY*``,
``WEBHOOK_DUE`` and ``WEBHOOK_RECENT`` entries of the registry (``config.redis_keys``).

A delivery is ``pending`` until its first attempt, ``sending`` while a worker holds its
lease, ``retrying`` between attempts, and ends ``delivered`` (a 2xx answer) or ``failed``
(the schedule's attempts used up, or its endpoint removed); finished ones expire after the
records' retention.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from config.redis_keys import (
    WEBHOOK_DELIVERY,
    WEBHOOK_DELIVERY_ATTEMPTS,
    WEBHOOK_DUE,
    WEBHOOK_RECENT,
)
from worker.records.codec import as_text

__all__ = [
    "DUE_KEY",
    "FANOUT",
    "FINISH",
    "RECENT_KEY",
    "TAKE",
    "WebhookDeliveries",
    "WebhookDelivery",
    "WebhookStatus",
    "attempts_key",
    "decode_delivery",
    "delivery_key",
]

DELIVERY_PREFIX = WEBHOOK_DELIVERY.prefix
DUE_KEY = WEBHOOK_DUE.pattern
RECENT_KEY = WEBHOOK_RECENT.pattern


def delivery_key(msg_id: str) -> str:
    return f"{DELIVERY_PREFIX}{msg_id}"


def attempts_key(msg_id: str) -> str:
    return WEBHOOK_DELIVERY_ATTEMPTS.name(msg_id=msg_id)


class WebhookStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# --- FANOUT: one event becomes a delivery per endpoint, then leaves the events zset -------
# Atomic: an event is dropped only with its deliveries stored. Run twice (two workers took
# the same event, or a reply was lost), it stores each delivery once: its id is derived from
# the event and the endpoint.
# KEYS: events zset, due, recent, then each delivery's hash
# ARGV: the event (member), retention seconds, then per delivery: msg id, fields (JSON object)
# -> how many deliveries it created
FANOUT = (
    _NOW
    + """
local created = 0
for i = 4, #KEYS do
  local msg = ARGV[2 * (i - 4) + 3]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local flat = {}
    for name, value in pairs(cjson.decode(ARGV[2 * (i - 4) + 4])) do
      flat[#flat + 1] = name
      flat[#flat + 1] = value
    end
    redis.call('HSET', KEYS[i], 'status', 'pending', 'attempt_count', '0',
      'created_at', tostring(now), 'updated_at', tostring(now),
      'next_attempt_at', tostring(now), unpack(flat))
    redis.call('ZADD', KEYS[2], now, msg)
    redis.call('ZADD', KEYS[3], now, msg)
    created = created + 1
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
return created
"""
)

# --- TAKE: the due deliveries, each under a lease for this worker -------------------------
# Due means its time came, or its lease lapsed (the worker sending it died: that attempt is
# recorded as lost and counted). The lease is measured by Redis' clock, never a host's.
# KEYS: due
# ARGV: most to take, lease seconds, delivery key prefix, lease token, max attempts,
#       retention seconds
# -> {now, {{msg id, {field, value, ...}}, ...}}
TAKE = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local taken = {}
for _, msg in ipairs(due) do
  local key = ARGV[3] .. msg
  local status = redis.call('HGET', key, 'status')
  if status == 'sending' then
    local number = redis.call('HINCRBY', key, 'attempt_count', 1)
    redis.call('RPUSH', key .. ':attempts', cjson.encode({
      number = number, started_at = tonumber(redis.call('HGET', key, 'updated_at')),
      duration_ms = 0, error = 'the worker was lost during this attempt; its lease expired'}))
    if number >= tonumber(ARGV[5]) then
      redis.call('HSET', key, 'status', 'failed', 'updated_at', tostring(now),
        'next_attempt_at', '', 'last_result', 'the worker was lost during the last attempt')
      redis.call('HDEL', key, 'lease_token', 'body')
      redis.call('EXPIRE', key, ARGV[6])
      redis.call('EXPIRE', key .. ':attempts', ARGV[6])
      status = 'failed'
    end
  end
  if status == 'pending' or status == 'retrying' or status == 'sending' then
    local lease_until = now + tonumber(ARGV[2])
    redis.call('HSET', key, 'status', 'sending', 'lease_token', ARGV[4],
      'lease_until', tostring(lease_until), 'updated_at', tostring(now))
    redis.call('ZADD', KEYS[1], lease_until, msg)
    taken[#taken + 1] = {msg, redis.call('HGETALL', key)}
  else
    redis.call('ZREM', KEYS[1], msg)  -- finished, or gone
  end
end
return {tostring(now), taken}
"""
)

# --- FINISH: record one attempt and what follows it ----------------------------------------
# Only the lease's holder changes the status: a worker whose lease lapsed (another took the
# delivery over and counted this attempt as lost) still records what its attempt got, marked
# superseded and not counted again. A finished delivery drops its body: only its record of
# attempts is read from then on, for the records' retention.
# KEYS: the delivery's hash, its attempts list, due
# ARGV: msg id, lease token, attempt JSON ('' when none was made), status (retrying |
#       delivered | failed), seconds to the next attempt, retention seconds, last result
# -> 1 when applied, 0 when the lease was no longer this worker's (or the delivery is gone)
FINISH = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local mine = redis.call('HGET', KEYS[1], 'lease_token') == ARGV[2]
if ARGV[3] ~= '' then
  local attempt = ARGV[3]
  if not mine then
    local late = cjson.decode(attempt)
    late['superseded'] = true
    attempt = cjson.encode(late)
  end
  redis.call('RPUSH', KEYS[2], attempt)
end
if not mine then return 0 end
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[1], 'attempt_count', 1) end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'updated_at', tostring(now),
  'last_result', ARGV[7], 'lease_until', '0')
redis.call('HDEL', KEYS[1], 'lease_token')
if ARGV[4] == 'retrying' then
  local due = now + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'next_attempt_at', tostring(due))
  redis.call('ZADD', KEYS[3], due, ARGV[1])
else
  redis.call('HSET', KEYS[1], 'next_attempt_at', '')
  redis.call('HDEL', KEYS[1], 'body')
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 1
"""
)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event for one endpoint, as operators read it: without its body (which Redis
    keeps only until the delivery is finished)."""

    id: str  # the webhook-id
    endpoint: str
    url: str
    type: str
    delivery_id: str
    status: WebhookStatus
    attempt_count: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    last_result: str | None
    attempts: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "url": self.url,
            "type": self.type,
            "delivery_id": self.delivery_id,
            "status": self.status.value,
            "attempt_count": self.attempt_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_attempt_at": self.next_attempt_at,
            "last_result": self.last_result,
            "attempts": list(self.attempts),
        }


def decode_delivery(
    msg_id: str, fields: Mapping[bytes, bytes], attempts: Sequence[bytes] = ()
) -> WebhookDelivery:
    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return as_text(value) if value not in (None, b"") else None

    next_at = text("next_attempt_at")
    return WebhookDelivery(
        id=msg_id,
        endpoint=text("endpoint") or "",
        url=text("url") or "",
        type=text("type") or "",
        delivery_id=text("delivery_id") or "",
        status=WebhookStatus(text("status") or WebhookStatus.PENDING.value),
        attempt_count=int(text("attempt_count") or 0),
        created_at=float(text("created_at") or 0),
        updated_at=float(text("updated_at") or 0),
        next_attempt_at=float(next_at) if next_at else None,
        last_result=text("last_result"),
        attempts=tuple(json.loads(raw) for raw in attempts),
    )


class WebhookDeliveries:
    """Reads the recent webhook deliveries (``outbox webhooks deliveries``, the API)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def recent(self, limit: int = 50) -> list[WebhookDelivery]:
        """The newest first, each with its attempts."""
        ids = [as_text(raw) for raw in self._redis.zrevrange(RECENT_KEY, 0, max(limit, 1) - 1)]
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for msg_id in ids:
            pipe.hgetall(delivery_key(msg_id))
            pipe.lrange(attempts_key(msg_id), 0, -1)
        replies = pipe.execute()
        found = []
        for index, msg_id in enumerate(ids):
            fields, attempts = replies[2 * index], replies[2 * index + 1]
            if fields:  # expired with the retention
                found.append(decode_delivery(msg_id, fields, attempts))
        return found
