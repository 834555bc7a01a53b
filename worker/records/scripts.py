"""The Lua scripts that change records atomically, each with its KEYS/ARGV contract, the
function that builds its call and the one that decodes its reply.

A script runs on a synchronous client (producer, operator) or an asynchronous one (worker),
alone or in a pipeline, so the wrappers build a ``ScriptCall`` and decode a reply rather
than calling Redis themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.records.codec import as_text, decode_record, encode_attempt
from worker.records.keys import (
    ATTEMPT_COUNTERS,
    DUE_KEY,
    IDEMPOTENCY_PREFIX,
    KEY_DELIVERIES_PREFIX,
    OWNED_IDEMPOTENCY_PREFIX,
    PAUSE_KEY,
    STATUS_INDEX_PREFIX,
    WEBHOOK_EVENTS_KEY,
    WEBHOOKS_KEY,
    attempts_key,
    idempotency_key,
    key_deliveries_key,
    record_key,
    status_index_key,
)
from worker.records.model import (
    CANCELLABLE_STATUSES,
    FINAL_STATUSES,
    Attempt,
    DeliveryRecord,
    DeliveryStatus,
)

__all__ = [
    "ALREADY_DONE",
    "APPLIED",
    "CANCEL",
    "CLAIM",
    "CREATE",
    "ENQUEUE",
    "PURGE",
    "RENEW",
    "SWEEP",
    "TRANSITION",
    "AccountPause",
    "AlreadyFinal",
    "Busy",
    "CancelResult",
    "Cancelled",
    "ClaimResult",
    "Claimed",
    "Created",
    "Early",
    "Exhausted",
    "Lapsed",
    "Missing",
    "PurgeResult",
    "Refused",
    "ScriptCall",
    "SweepVerdict",
    "Unreadable",
    "cancel_call",
    "claim_call",
    "create_call",
    "decode_cancel",
    "decode_claim",
    "decode_create",
    "decode_purge",
    "decode_sweep",
    "decode_transition",
    "purge_call",
    "renew_call",
    "sweep_call",
    "transition_call",
]

Argument = str | bytes | int | float


def _lua_set(name: str, statuses: frozenset[DeliveryStatus]) -> str:
    """A Lua table of statuses, so the scripts test membership as the model defines it."""
    members = ", ".join(f"{status.value} = true" for status in sorted(statuses))
    return f"local {name} = {{{members}}}\n"


# Every script that tests for a final status starts with this table.
_FINAL = _lua_set("FINAL", FINAL_STATUSES)
# Where a status became final while a webhook endpoint was registered, the same script marks
# the outcome for the webhook dispatcher: one EXISTS when none is, so no cost without them.
# KEYS (of the caller): record, endpoints hash, events zset.
_ANNOUNCE = """
local function announce(record, endpoints, events, id, status, now)
  if redis.call('EXISTS', endpoints) == 1 then
    local attempts = redis.call('HGET', record, 'attempt_count') or '0'
    redis.call('ZADD', events, now, id .. ':' .. status .. ':' .. attempts)
  end
end
"""


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script invocation."""

    keys: list[str]
    args: list[Argument]


# --- CREATE: store a queued (or scheduled) record, once per idempotency key -----------------
# Its score in the queued index is when it was published (the sweeper's check of lost tasks).
# A scheduled one goes into the scheduled index and is due (for the sweeper) at its send time.
# KEYS: record, queued (or scheduled) index, idempotency key ("" when none; an API key's own,
#       or shared), the API key's deliveries ("" when no API key sent it), due
# ARGV: id, now, idempotency ttl seconds, send at ("" = now), field, value, ...
# -> {1, id} when created, {0, existing id} when the idempotency key was already used.
CREATE = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1]) end
if KEYS[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  -- Ids older than twice the retention belong to records expired long ago: each write
  -- drops them, so the index of a key that never lists stays bounded.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[2]) - 2 * tonumber(ARGV[3]))
end
return {1, ARGV[1]}
"""


# --- ENQUEUE: CREATE, and in the same script the send task, for one e-mail ------------------
# The HTTP API's enqueue in one round trip: only while the caller's API key still holds what
# the API authenticated (a revoked or changed key stores nothing), its last use noted, the
# record created as CREATE does, and the task pushed onto its broker list (with the event
# that announces it) in the same atomic step, so a record is never without its task.
# KEYS: record, queued (or scheduled) index, idempotency key or "", the API key's deliveries
#       or "", due, guard key or "", broker list or "" (scheduled: the sweeper publishes it),
#       last-used hash or ""
# ARGV: id, now, idempotency ttl seconds, send at or "", guard value, task message, event
#       channel or "", event, last-used field, last-used value, field, value, ...
# -> {1, id} when created; {0, existing id, its status} when the idempotency key was already
#    used; {-1} when the guard key no longer holds the guard value (nothing written).
ENQUEUE = f"""
if KEYS[6] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[5] then return {{-1}} end
if KEYS[8] ~= '' then redis.call('HSET', KEYS[8], ARGV[9], ARGV[10]) end
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {{0, existing, redis.call('HGET', '{record_key("")}' .. existing, 'status')}}
  end
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1]) end
if KEYS[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[2]) - 2 * tonumber(ARGV[3]))
end
if KEYS[7] ~= '' then
  redis.call('LPUSH', KEYS[7], ARGV[6])
  if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
end
return {{1, ARGV[1]}}
"""


@dataclass(frozen=True, slots=True)
class Created:
    """The id the producer gets back; ``created`` is False when an idempotency key matched."""

    id: str
    created: bool


def create_call(
    delivery_id: str,
    *,
    now: float,
    fields: Mapping[str, str | bytes],
    idempotency: str | None,
    idempotency_ttl_seconds: int,
    created_by: str | None = None,
    idempotency_owner: str | None = None,
    send_at: float | None = None,
) -> ScriptCall:
    status = DeliveryStatus.QUEUED if send_at is None else DeliveryStatus.SCHEDULED
    return ScriptCall(
        keys=[
            record_key(delivery_id),
            status_index_key(status),
            idempotency_key(idempotency, idempotency_owner) if idempotency else "",
            key_deliveries_key(created_by) if created_by else "",
            DUE_KEY,
        ],
        args=[
            delivery_id,
            repr(now),
            idempotency_ttl_seconds,
            repr(send_at) if send_at is not None else "",
            *(item for pair in fields.items() for item in pair),
        ],
    )


def decode_create(reply: Sequence[Any]) -> Created:
    return Created(as_text(reply[1]), bool(reply[0]))


# --- CLAIM: take a delivery for one attempt, and read it with the settings version ---------
# The claim is a lease, renewed while the attempt runs (RENEW) and measured by Redis' clock
# (TIME), never a worker's: a host whose clock runs ahead cannot take over a live claim.
# The worker names each claim with a random token, kept on the record: RENEW and TRANSITION
# act only for the claim that holds it, and this script run again with the same token (its
# reply was lost) answers "claimed" again instead of "busy".
# A claim whose lease ran out belonged to a lost worker, perhaps killed by this very message:
# it is taken over only by a claim that asks to (the worker then attempts it alone in its
# process), its attempt recorded as "lost" and counted; once the attempts are used up that
# way (a message that kills its worker), any claim fails the delivery instead.
# The sending account's pause (``worker.sending_limits``) comes with the claim: a paused
# account costs its workers no extra round trip to notice.
# A scheduled delivery is never claimed before its send time (a task published early, by a
# producer that died between storing and publishing, or a duplicate): it answers 'early'.
# KEYS: record, settings hash, attempts list, attempt counters, due, account pause,
#       webhook endpoints, webhook events
# ARGV: id, claim token, lease seconds, status index prefix, max attempts, retention seconds,
#       take over a lapsed claim ('1' | '0')
# -> {'missing'} | {'final', status} | {'busy', lease_until} | {'lapsed'}
#    | {'early', next_attempt_at} | {'exhausted', reason}
#    | {'claimed', version, {field, value, ...}, paused for seconds, account, reason}
CLAIM = (
    _FINAL
    + _ANNOUNCE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function claimed()
  local version = redis.call('HGET', KEYS[2], 'version') or '0'
  local pause = redis.call('HMGET', KEYS[6], 'until', 'account', 'reason')
  local paused_for = '0'
  if pause[1] then paused_for = tostring(tonumber(pause[1]) - now) end
  return {'claimed', version, redis.call('HGETALL', KEYS[1]), paused_for, pause[2] or '',
    pause[3] or ''}
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if FINAL[status] then return {'final', status} end
if status == 'sending' then
  if redis.call('HGET', KEYS[1], 'claim_token') == ARGV[2] then
    -- Asked again (the first reply was lost): the claim is still this one, and its lease
    -- starts again from now, as the first claim's did.
    local lease_until = now + tonumber(ARGV[3])
    redis.call('HSET', KEYS[1], 'lease_until', tostring(lease_until))
    redis.call('ZADD', KEYS[5], lease_until, ARGV[1])
    return claimed()
  end
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now then return {'busy', tostring(lease)} end
  local number = tonumber(redis.call('HGET', KEYS[1], 'attempt_count') or '0')
  local used = number - tonumber(redis.call('HGET', KEYS[1], 'retry_base') or '0')
  local last = used >= tonumber(ARGV[5])
  if not last and ARGV[7] ~= '1' then return {'lapsed'} end
  redis.call('RPUSH', KEYS[3], cjson.encode({
    number = number,
    started_at = tonumber(redis.call('HGET', KEYS[1], 'updated_at')),
    duration_ms = 0, outcome = 'lost',
    error = 'the worker was lost during this attempt; its claim expired'}))
  redis.call('HINCRBY', KEYS[4], 'lost', 1)
  if last then
    local reason = 'the worker was lost during attempt ' .. number .. ', the last of '
      .. ARGV[5] .. ' allowed; not tried again'
    local recipients = redis.call('HGET', KEYS[1], 'recipients')
    if recipients then
      local decoded = cjson.decode(recipients)
      for _, r in ipairs(decoded) do
        if r.status == 'pending' or r.status == 'deferred' then
          r.status = 'failed'
          r.reply = 'the worker was lost'
        end
      end
      redis.call('HSET', KEYS[1], 'recipients', cjson.encode(decoded))
    end
    redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', tostring(now),
      'lease_until', '0', 'last_error', reason, 'next_attempt_at', '')
    redis.call('HDEL', KEYS[1], 'claim_token')
    redis.call('ZREM', ARGV[4] .. 'sending', ARGV[1])
    redis.call('ZADD', ARGV[4] .. 'failed', now, ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[6])
    redis.call('EXPIRE', KEYS[3], ARGV[6])
    announce(KEYS[1], KEYS[7], KEYS[8], ARGV[1], 'failed', now)
    return {'exhausted', reason}
  end
end
if status == 'retrying' or status == 'waiting' or status == 'scheduled' then
  -- A duplicate job (its delivery's retry is already scheduled) must not skip the backoff;
  -- a scheduled delivery waits for its time to the second.
  local due = tonumber(redis.call('HGET', KEYS[1], 'next_attempt_at') or '0') or 0
  local slack = 1
  if status == 'scheduled' then slack = 0 end
  if due > now + slack then return {'early', tostring(due)} end
end
local lease_until = now + tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempt_count', 1)
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', tostring(now),
  'lease_until', tostring(lease_until), 'claim_token', ARGV[2])
redis.call('ZREM', ARGV[4] .. status, ARGV[1])
redis.call('ZADD', ARGV[4] .. 'sending', now, ARGV[1])
redis.call('ZADD', KEYS[5], lease_until, ARGV[1])
return claimed()
"""
)


@dataclass(frozen=True, slots=True)
class AccountPause:
    """A sending account paused for every worker, as the claim found it."""

    account: str
    seconds_left: float
    reason: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """This process now owns the delivery for one attempt (until the lease runs out), under
    the claim named ``token``."""

    record: DeliveryRecord
    settings_version: int
    token: str
    pause: AccountPause | None = None


@dataclass(frozen=True, slots=True)
class AlreadyFinal:
    """Sent, partially sent or failed before: never sent again."""

    status: DeliveryStatus


@dataclass(frozen=True, slots=True)
class Busy:
    """Another process holds the delivery; look again when its lease ends."""

    lease_until: float


@dataclass(frozen=True, slots=True)
class Lapsed:
    """The process that held the delivery died mid-attempt (its lease ran out), perhaps killed
    by this message: only a claim that takes over, made alone in its process, takes it."""


@dataclass(frozen=True, slots=True)
class Early:
    """A retry is scheduled for later; this job is a duplicate and must not run it early."""

    due_at: float


@dataclass(frozen=True, slots=True)
class Missing:
    """No such record (expired or purged)."""


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The attempts were used up by workers lost mid-attempt: the claim failed the delivery."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Claimed (under ``token``), but the record cannot be decoded: it fails instead of
    blocking its task."""

    attempt_count: int
    reason: str
    token: str


ClaimResult = Claimed | AlreadyFinal | Busy | Lapsed | Early | Exhausted | Missing | Unreadable


def claim_call(
    delivery_id: str,
    *,
    token: str,
    lease_seconds: float,
    settings_key: str,
    max_attempts: int,
    retention_seconds: int,
    take_over: bool = False,
) -> ScriptCall:
    return ScriptCall(
        keys=[
            record_key(delivery_id),
            settings_key,
            attempts_key(delivery_id),
            ATTEMPT_COUNTERS,
            DUE_KEY,
            PAUSE_KEY,
            WEBHOOKS_KEY,
            WEBHOOK_EVENTS_KEY,
        ],
        args=[
            delivery_id,
            token,
            repr(lease_seconds),
            STATUS_INDEX_PREFIX,
            max_attempts,
            retention_seconds,
            "1" if take_over else "0",
        ],
    )


def decode_claim(delivery_id: str, token: str, reply: Sequence[Any]) -> ClaimResult:
    match as_text(reply[0]):
        case "missing":
            return Missing()
        case "final":
            return AlreadyFinal(DeliveryStatus(as_text(reply[1])))
        case "busy":
            return Busy(float(reply[1]))
        case "lapsed":
            return Lapsed()
        case "early":
            return Early(float(reply[1]))
        case "exhausted":
            return Exhausted(as_text(reply[1]))
    flat = reply[2]
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    paused_for = float(reply[3])
    pause = (
        AccountPause(as_text(reply[4]), paused_for, as_text(reply[5])) if paused_for > 0 else None
    )
    try:
        record = decode_record(delivery_id, fields)
    except (ValueError, KeyError, TypeError) as exc:
        return Unreadable(
            int(fields.get(b"attempt_count", b"0")),
            f"the stored record cannot be read ({type(exc).__name__}); it was not sent",
            token,
        )
    return Claimed(record, settings_version=int(reply[1]), token=token, pause=pause)


# --- TRANSITION: move a record to a new status if it is still as the caller saw it ---------
# The guard field must still hold the guard value; a worker's transition also names its
# claim, and changes nothing unless the record still holds that claim's token (none when the
# claim was taken over, or the delivery reset by an operator). The same transition run again
# (its reply was lost) finds the record moved on under its own token: it answers "already
# done" and adds nothing, no second attempt.
# The attempt (if any) is appended and counted, the expiry set (final statuses) or cleared,
# and the delivery's due time set, so many seconds from now (a retry's or a wait's, also
# written as next_attempt_at), or dropped (final, or queued: the queued index holds those).
# "Now" is Redis' clock, unless the caller gives its own: an operator's transition to queued
# is scored in the clock that stamps the task it publishes (the sweeper compares the two).
# A status made final is announced to the webhook dispatcher (while endpoints are registered).
# KEYS: record, attempts list, attempt counters, due, webhook endpoints, webhook events
# ARGV: id, now ("" = Redis' clock), guard field, guard value, new status, status index
#       prefix, expire seconds (0 = keep forever), attempt json ("" = none), attempt outcome,
#       due in seconds ("" = not due), claim token ("" = not a claim's), field, value, ...
# -> 1 when applied, 0 when the guard or the claim no longer holds (or the record is gone),
#    2 when this claim's transition was applied before (a call run again).
TRANSITION = (
    _FINAL
    + _ANNOUNCE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local token = ARGV[11]
if token ~= '' and redis.call('HGET', KEYS[1], 'claim_token') ~= token then return 0 end
if redis.call('HGET', KEYS[1], ARGV[3]) ~= ARGV[4] then
  if token ~= '' then return 2 end
  return 0
end
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
redis.call('ZREM', ARGV[6] .. status, ARGV[1])
redis.call('ZADD', ARGV[6] .. ARGV[5], now, ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'updated_at', tostring(now), unpack(ARGV, 12))
if ARGV[8] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[8])
  redis.call('HINCRBY', KEYS[3], ARGV[9], 1)
end
if ARGV[10] == '' then
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  local due = now + tonumber(ARGV[10])
  redis.call('ZADD', KEYS[4], due, ARGV[1])
  redis.call('HSET', KEYS[1], 'next_attempt_at', tostring(due))
end
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
if FINAL[ARGV[5]] then announce(KEYS[1], KEYS[5], KEYS[6], ARGV[1], ARGV[5], now) end
return 1
"""
)
# TRANSITION's replies.
APPLIED, ALREADY_DONE = 1, 2


def transition_call(
    delivery_id: str,
    *,
    guard: tuple[str, str],
    status: DeliveryStatus,
    expire_seconds: int,
    now: float | None = None,
    due_in: float | None = None,
    claim_token: str | None = None,
    attempt: Attempt | None = None,
    fields: Mapping[str, str | bytes] | None = None,
) -> ScriptCall:
    return ScriptCall(
        keys=[
            record_key(delivery_id),
            attempts_key(delivery_id),
            ATTEMPT_COUNTERS,
            DUE_KEY,
            WEBHOOKS_KEY,
            WEBHOOK_EVENTS_KEY,
        ],
        args=[
            delivery_id,
            repr(now) if now is not None else "",
            guard[0],
            guard[1],
            status.value,
            STATUS_INDEX_PREFIX,
            str(expire_seconds),
            encode_attempt(attempt) if attempt else "",
            attempt.outcome.value if attempt else "",
            repr(due_in) if due_in is not None else "",
            claim_token or "",
            *(item for pair in (fields or {}).items() for item in pair),
        ],
    )


def decode_transition(reply: Any) -> bool:
    """True when the transition took effect: now, or (a claim's, run again) before."""
    return int(reply) in (APPLIED, ALREADY_DONE)


# --- PURGE: delete a record that is still final and older than the cutoff ------------------
# A retry between the purge's listing and this call keeps it. The attempts, the index entries
# and the idempotency key go with it.
# KEYS: record, attempts list, due
# ARGV: id, cutoff, status index prefix, idempotency prefix, an API key's idempotency prefix,
#       an API key's deliveries prefix
# -> 1 when deleted, 0 when kept, -1 when the record was already gone (expired)
PURGE = (
    _FINAL
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if not FINAL[status] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0') >= tonumber(ARGV[2]) then
  return 0
end
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
local scope = redis.call('HGET', KEYS[1], 'idempotency_owner')
if key then
  if scope then redis.call('DEL', ARGV[5] .. scope .. ':' .. key)
  else redis.call('DEL', ARGV[4] .. key) end
end
local owner = redis.call('HGET', KEYS[1], 'created_by')
if owner then redis.call('ZREM', ARGV[6] .. owner, ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', ARGV[3] .. status, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    deleted: bool
    already_gone: bool  # expired before the purge: only its id was left in an index


def purge_call(delivery_id: str, *, cutoff: float) -> ScriptCall:
    return ScriptCall(
        keys=[record_key(delivery_id), attempts_key(delivery_id), DUE_KEY],
        args=[
            delivery_id,
            repr(cutoff),
            STATUS_INDEX_PREFIX,
            IDEMPOTENCY_PREFIX,
            OWNED_IDEMPOTENCY_PREFIX,
            KEY_DELIVERIES_PREFIX,
        ],
    )


def decode_purge(reply: Any) -> PurgeResult:
    return PurgeResult(deleted=int(reply) > 0, already_gone=int(reply) < 0)


# --- CANCEL: withdraw a delivery that nothing is sending ----------------------------------
# Scheduled, queued, retrying or waiting: it becomes cancelled (final, kept for the
# retention) and leaves the due set, so no sweep publishes it again; a task still in the
# broker's queue finds it final when claimed. Sending (a worker holds it) or final: refused,
# the status given back. The recipients still to reach read as cancelled (``decode_record``).
# KEYS: record, attempts list, due, webhook endpoints, webhook events
# ARGV: id, status index prefix, retention seconds, reason
# -> {'cancelled'} | {'refused', status} | {'missing'}
CANCEL = (
    _FINAL
    + _ANNOUNCE
    + _lua_set("CANCELLABLE", CANCELLABLE_STATUSES)
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if not CANCELLABLE[status] then return {'refused', status} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', tostring(now),
  'last_error', ARGV[4], 'next_attempt_at', '', 'waiting_for', '')
redis.call('ZREM', ARGV[2] .. status, ARGV[1])
redis.call('ZADD', ARGV[2] .. 'cancelled', now, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
announce(KEYS[1], KEYS[4], KEYS[5], ARGV[1], 'cancelled', now)
return {'cancelled'}
"""
)


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The delivery is cancelled: it will not be sent."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Not cancelled: it is being sent (``sending``) or already final."""

    status: DeliveryStatus


CancelResult = Cancelled | Refused | Missing


def cancel_call(delivery_id: str, *, retention_seconds: int, reason: str) -> ScriptCall:
    return ScriptCall(
        keys=[
            record_key(delivery_id),
            attempts_key(delivery_id),
            DUE_KEY,
            WEBHOOKS_KEY,
            WEBHOOK_EVENTS_KEY,
        ],
        args=[delivery_id, STATUS_INDEX_PREFIX, retention_seconds, reason],
    )


def decode_cancel(reply: Sequence[Any]) -> CancelResult:
    match as_text(reply[0]):
        case "cancelled":
            return Cancelled()
        case "refused":
            return Refused(DeliveryStatus(as_text(reply[1])))
    return Missing()


# --- RENEW: extend (or, with no seconds, give up) the lease of a claim still ours ----------
# By Redis' clock; the claim is ours while the record is sending under its token. Run again,
# it only sets the same lease again.
# KEYS: record, due; ARGV: id, claim token, lease seconds (0: it ends now, to be taken over)
# -> 1 when the claim is still ours and was renewed, 0 when it was lost meanwhile.
RENEW = """
if redis.call('HGET', KEYS[1], 'status') ~= 'sending' then return 0 end
if redis.call('HGET', KEYS[1], 'claim_token') ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local lease_until = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', tostring(lease_until))
redis.call('ZADD', KEYS[2], lease_until, ARGV[1])
return 1
"""


def renew_call(delivery_id: str, *, token: str, lease_seconds: float) -> ScriptCall:
    return ScriptCall(
        keys=[record_key(delivery_id), DUE_KEY],
        args=[delivery_id, token, repr(lease_seconds)],
    )


# --- SWEEP: decide, for one delivery the sweeper looks at, whether to publish it -----------
# Leases are compared by Redis' clock. The queued index holds when each queued delivery's
# task was published, in the clock that stamped the task (the publisher's): "published at"
# (the sweeper's own, for the tasks it publishes) and "published before" are in those.
# sending: a lease that ran out (the holder died): published, so a worker takes it over.
# retrying, waiting, scheduled: its due time came: queued again, and published.
# queued: published again when its task can no longer be waiting in the broker's queue (it
#   was published before the oldest task still waiting there).
# Run again with the same arguments (its reply was lost), it answers the same: a delivery it
# queued carries its own "published at".
# KEYS: record, due; ARGV: id, published at, status index prefix, published before (the
#   oldest waiting task's publication time, less a margin), look again after (seconds)
# -> 'publish' | 'waiting' | 'held' | 'gone'
SWEEP = (
    _FINAL
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or FINAL[status] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if status == 'sending' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now then
    redis.call('ZADD', KEYS[2], lease, ARGV[1])
    return 'held'
  end
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
  return 'publish'
end
local queued = ARGV[3] .. 'queued'
if status == 'queued' then
  local published = tonumber(redis.call('ZSCORE', queued, ARGV[1]) or '0')
  if published == tonumber(ARGV[2]) then return 'publish' end
  if published >= tonumber(ARGV[4]) then return 'waiting' end
else
  redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', tostring(now))
  redis.call('ZREM', ARGV[3] .. status, ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('ZADD', queued, ARGV[2], ARGV[1])
return 'publish'
"""
)


class SweepVerdict(StrEnum):
    PUBLISH = "publish"  # publish its task (again)
    WAITING = "waiting"  # its task may still be waiting in the broker's queue
    HELD = "held"  # a live claim holds it
    GONE = "gone"  # final or expired: no longer due


def sweep_call(
    delivery_id: str, *, published_at: float, published_before: float, look_again_after: float
) -> ScriptCall:
    return ScriptCall(
        keys=[record_key(delivery_id), DUE_KEY],
        args=[
            delivery_id,
            repr(published_at),
            STATUS_INDEX_PREFIX,
            repr(published_before),
            repr(look_again_after),
        ],
    )


def decode_sweep(reply: Any) -> SweepVerdict:
    return SweepVerdict(as_text(reply))
