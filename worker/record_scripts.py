"""Lua scripts that change a delivery record atomically, keeping the status indexes in step."""

from __future__ import annotations

# KEYS: record, queued index, idempotency key ("" when none)
# ARGV: id, now, idempotency ttl seconds, field, value, ...
# -> {1, id} when created, {0, existing id} when the idempotency key was already used.
CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {1, ARGV[1]}
"""

# Claim a delivery for one attempt, and read it with the settings version in the same trip.
# A claim whose lease ran out belonged to a lost worker: its attempt is recorded as "lost".
# KEYS: record, settings hash, attempts list
# ARGV: id, now, lease seconds, status index prefix
# -> {'missing'} | {'final', status} | {'busy', lease_until} | {'early', next_attempt_at}
#    | {'claimed', version, {fields}}
CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'sent' or status == 'partially_sent' or status == 'failed' then
  return {'final', status}
end
local now = tonumber(ARGV[2])
if status == 'sending' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now then return {'busy', tostring(lease)} end
  redis.call('RPUSH', KEYS[3], cjson.encode({
    number = tonumber(redis.call('HGET', KEYS[1], 'attempt_count')),
    started_at = tonumber(redis.call('HGET', KEYS[1], 'updated_at')),
    duration_ms = 0, outcome = 'lost',
    error = 'the worker was lost during this attempt; its claim expired'}))
end
if status == 'retrying' then
  -- A duplicate job (its delivery's retry is already scheduled) must not skip the backoff.
  local due = tonumber(redis.call('HGET', KEYS[1], 'next_attempt_at') or '0') or 0
  if due > now + 1 then return {'early', tostring(due)} end
end
redis.call('HINCRBY', KEYS[1], 'attempt_count', 1)
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[2],
  'lease_until', tostring(now + tonumber(ARGV[3])))
redis.call('ZREM', ARGV[4] .. status, ARGV[1])
redis.call('ZADD', ARGV[4] .. 'sending', now, ARGV[1])
local version = redis.call('HGET', KEYS[2], 'version') or '0'
return {'claimed', version, redis.call('HGETALL', KEYS[1])}
"""

# Move a record to a new status if it is still as the caller saw it (the guard field holds
# the guard value), append an attempt, and set or clear its expiry.
# KEYS: record, attempts list
# ARGV: id, now, guard field, guard value, new status, status index prefix,
#       expire seconds (0 = keep forever), attempt json ("" = none), field, value, ...
# -> 1 when applied, 0 when the guard no longer holds (or the record is gone).
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if redis.call('HGET', KEYS[1], ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('ZREM', ARGV[6] .. status, ARGV[1])
redis.call('ZADD', ARGV[6] .. ARGV[5], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'updated_at', ARGV[2], unpack(ARGV, 9))
if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[8]) end
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return 1
"""


# Delete a record if it is still final and last changed before the cutoff (a retry between
# the purge's listing and this call keeps it), with its attempts, indexes and idempotency key.
# KEYS: record, attempts list; ARGV: id, cutoff, status index prefix, idempotency key prefix
# -> 1 when deleted, 0 when kept, -1 when the record was already gone (expired)
PURGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'sent' and status ~= 'partially_sent' and status ~= 'failed' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0') >= tonumber(ARGV[2]) then
  return 0
end
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
if key then redis.call('DEL', ARGV[4] .. key) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', ARGV[3] .. status, ARGV[1])
return 1
"""


def transition_arguments(
    *,
    delivery_id: str,
    now: float,
    guard: tuple[str, str],
    status: str,
    index_prefix: str,
    expire_seconds: int,
    attempt_json: str = "",
    fields: dict[str, str] | None = None,
) -> list[str]:
    """ARGV for TRANSITION, in its order."""
    flat = [item for pair in (fields or {}).items() for item in pair]
    return [
        delivery_id,
        repr(now),
        guard[0],
        guard[1],
        status,
        index_prefix,
        str(expire_seconds),
        attempt_json,
        *flat,
    ]
