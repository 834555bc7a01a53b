"""Sending limits and pauses of the sending account, shared by every worker through Redis.

A provider limits how fast one mailbox may send, so the limit must hold for every worker
process on every host together, measured with one clock: Redis' (``TIME`` inside the
scripts), never a host's. Two windows are kept per account:

- messages (SMTP transactions) in any ``window_seconds`` (60 s, plus a margin for the
  transaction's own latency: a provider counts a message when it arrives, not when outbox
  admitted it), as a sorted set of admission times: a sliding window, never a bucket whose
  burst could put more than N into one minute;
- recipients in any 24 hours, as a sorted set of admissions with their recipient counts and
  a running total.

An e-mail that the window cannot take now gets a reservation at the earliest time it can
(when as many earlier admissions have left the window), if that time is within one window;
its delivery then waits for it, holding no worker, and the reservation is taken when it is
claimed again. One further out reserves nothing and looks again when the reservations
reach its time, so e-mails claimed later (a higher priority) are not queued behind a whole
backlog's reservations.

A pause (the provider refused for its quota, or throttled) stops the account for every
worker until it ends; the claim script reads it (``worker.records.scripts.CLAIM``), so
checking it costs no round trip.

Its keys are ``PAUSE``, ``LIMIT_*`` and ``WAIT_COUNTERS`` of the registry
(``config.redis_keys``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import redis.asyncio as aioredis

from config import redis_keys as registry
from config.mail_settings import SendingLimits
from worker.records.keys import PAUSE_KEY

__all__ = [
    "DAY_SECONDS",
    "LIMIT_MARGIN_SECONDS",
    "PAUSE_KEY",
    "RATE_PAUSE_SECONDS",
    "WAIT_COUNTERS",
    "Admitted",
    "MemoryGate",
    "MustWait",
    "RedisGate",
    "SendingGate",
    "WaitReason",
]

WAIT_COUNTERS = registry.WAIT_COUNTERS.pattern
DAY_SECONDS = 86_400.0
MINUTE_SECONDS = 60.0
# Added to the minute: the provider counts a message when its DATA ends, up to a
# transaction's latency after outbox admitted it.
LIMIT_MARGIN_SECONDS = 2.0
# Exchange Online's SubmissionQuotaExceeded is its per-minute quota ("Exchange Online
# limits"): a minute's pause lets the window pass. Throttling replies without a stated wait
# get the same.
RATE_PAUSE_SECONDS = 60.0


class WaitReason(StrEnum):
    """Why an e-mail waits (and the label of its counter in /metrics)."""

    SENDING_LIMIT = "sending_limit"  # max_messages_per_minute
    DAILY_LIMIT = "daily_limit"  # max_recipients_per_day
    PROVIDER_THROTTLED = "provider_throttled"  # the provider's rate quota or throttling
    PROVIDER_DAILY_QUOTA = "provider_daily_quota"  # the provider's daily limit


@dataclass(frozen=True, slots=True)
class Admitted:
    """The account's windows took the e-mail: send it now."""


@dataclass(frozen=True, slots=True)
class MustWait:
    """Not now: wait ``seconds`` for ``waiting_for`` ("the sending limit, 30 per minute")."""

    seconds: float
    reason: WaitReason
    waiting_for: str


class SendingGate(Protocol):
    """Admits e-mails into the account's windows and pauses the account: ``RedisGate``, or
    ``MemoryGate`` in unit tests."""

    async def admit(
        self,
        account: str,
        token: str,
        *,
        transactions: int,
        recipients: int,
        limits: SendingLimits,
    ) -> Admitted | MustWait:
        """Whether ``transactions`` messages to ``recipients`` may go now; ``token`` names
        this delivery's attempt (a reservation made for it is found by it)."""

    async def pause(
        self, account: str, seconds: float | None, *, daily: bool, reason: str
    ) -> float:
        """Pause the account for every worker (``seconds``, else the provider's documented
        window); returns how long it is paused from now (a longer pause already set stays)."""


def _waiting_for(limits: SendingLimits, reason: WaitReason) -> str:
    if reason is WaitReason.SENDING_LIMIT:
        return f"the sending limit, {limits.max_messages_per_minute} per minute"
    return f"the daily limit, {limits.max_recipients_per_day} recipients per day"


# --- ADMIT ----------------------------------------------------------------------------------
# KEYS: minute zset, day zset, day total, wait counters
# ARGV: token, transactions, recipients, per minute (0: none), per day (0: none),
#       minute window seconds, day window seconds
# -> {'ok'} | {'wait', seconds, reason}
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local token, n, rcpts = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local per_minute, per_day = tonumber(ARGV[4]), tonumber(ARGV[5])
local window, day = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - day)
if #expired > 0 then
  local gone = 0
  for _, member in ipairs(expired) do gone = gone + tonumber(string.match(member, '|(%d+)$')) end
  redis.call('DECRBY', KEYS[3], gone)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - day)
end
local function wait(seconds, reason)
  redis.call('HINCRBY', KEYS[4], reason, 1)
  return {'wait', tostring(seconds), reason}
end
local first = token .. '#1'
local reserved = redis.call('ZSCORE', KEYS[1], first)
if reserved and tonumber(reserved) > now + 0.05 then
  -- claimed before its reservation (a duplicate job): it keeps its place
  return wait(tonumber(reserved) - now, 'sending_limit')
end
if not reserved then
  local total = tonumber(redis.call('GET', KEYS[3]) or '0')
  if per_day > 0 and total > 0 and total + rcpts > per_day then
    -- when enough of the last day's recipients have left the window
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    local left = total
    for i = 1, #entries, 2 do
      left = left - tonumber(string.match(entries[i], '|(%d+)$'))
      if left + rcpts <= per_day then
        return wait(tonumber(entries[i + 1]) + day - now, 'daily_limit')
      end
    end
    return wait(day, 'daily_limit')
  end
  local count = redis.call('ZCARD', KEYS[1])
  if per_minute > 0 and count + n > per_minute then
    local k = math.min(count + n - per_minute, count)
    local oldest = redis.call('ZRANGE', KEYS[1], k - 1, k - 1, 'WITHSCORES')
    local at = tonumber(oldest[2]) + window
    if at - now > window then
      -- beyond one window: look again when the reservations have come that far
      return wait(at - window - now, 'sending_limit')
    end
    for i = 1, n do redis.call('ZADD', KEYS[1], at, token .. '#' .. i) end
    if per_day > 0 then
      redis.call('ZADD', KEYS[2], at, token .. '|' .. rcpts)
      redis.call('INCRBY', KEYS[3], rcpts)
      redis.call('PEXPIRE', KEYS[2], math.ceil(day * 1000) + 60000)
      redis.call('PEXPIRE', KEYS[3], math.ceil(day * 1000) + 60000)
    end
    redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000) + 1000)
    return wait(at - now, 'sending_limit')
  end
  if per_day > 0 then
    redis.call('ZADD', KEYS[2], now, token .. '|' .. rcpts)
    redis.call('INCRBY', KEYS[3], rcpts)
    redis.call('PEXPIRE', KEYS[2], math.ceil(day * 1000) + 60000)
    redis.call('PEXPIRE', KEYS[3], math.ceil(day * 1000) + 60000)
  end
end
-- admitted now (or its reservation came): counted from now, when it goes out
if per_minute > 0 then
  for i = 1, n do redis.call('ZADD', KEYS[1], now, token .. '#' .. i) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000) + 1000)
end
return {'ok'}
"""

# --- PAUSE ----------------------------------------------------------------------------------
# KEYS: pause hash, day zset of the account, wait counters
# ARGV: account, seconds (-1: until the account's day window frees, else a day), reason,
#       counter label
# -> the pause's remaining seconds
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seconds = tonumber(ARGV[2])
if seconds < 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  seconds = 86400
  if oldest[2] then seconds = math.max(tonumber(oldest[2]) + 86400 - now, 60) end
end
local until_ = now + seconds
local current = redis.call('HMGET', KEYS[1], 'until', 'account')
if current[2] == ARGV[1] and tonumber(current[1] or '0') > until_ then
  return tostring(tonumber(current[1]) - now)
end
redis.call('HSET', KEYS[1], 'until', tostring(until_), 'account', ARGV[1], 'reason', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(seconds * 1000) + 1000)
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return tostring(seconds)
"""


def _keys(account: str) -> list[str]:
    return [
        registry.LIMIT_MINUTE.name(account=account),
        registry.LIMIT_DAY.name(account=account),
        registry.LIMIT_DAY_TOTAL.name(account=account),
        WAIT_COUNTERS,
    ]


class RedisGate:
    """The account's windows and pause in Redis, shared by every worker process and host."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        margin_seconds: float = LIMIT_MARGIN_SECONDS,
        rate_pause_seconds: float = RATE_PAUSE_SECONDS,
    ) -> None:
        self._window = MINUTE_SECONDS + margin_seconds
        self._rate_pause_seconds = rate_pause_seconds
        self._admit = client.register_script(_ADMIT)
        self._pause = client.register_script(_PAUSE)

    async def admit(
        self,
        account: str,
        token: str,
        *,
        transactions: int,
        recipients: int,
        limits: SendingLimits,
    ) -> Admitted | MustWait:
        reply = await self._admit(
            keys=_keys(account),
            args=[
                token,
                transactions,
                recipients,
                limits.max_messages_per_minute or 0,
                limits.max_recipients_per_day or 0,
                repr(self._window),
                repr(DAY_SECONDS),
            ],
        )
        if bytes(reply[0]) == b"ok":
            return Admitted()
        reason = WaitReason(bytes(reply[2]).decode())
        return MustWait(max(float(reply[1]), 0.0), reason, _waiting_for(limits, reason))

    async def pause(
        self, account: str, seconds: float | None, *, daily: bool, reason: str
    ) -> float:
        wanted = seconds if seconds is not None else (-1.0 if daily else self._rate_pause_seconds)
        label = WaitReason.PROVIDER_DAILY_QUOTA if daily else WaitReason.PROVIDER_THROTTLED
        keys = _keys(account)
        return float(
            await self._pause(
                keys=[PAUSE_KEY, keys[1], WAIT_COUNTERS],
                args=[account, repr(wanted), reason, label.value],
            )
        )


@dataclass
class MemoryGate:
    """The same windows in memory, for unit tests of the delivery core's decisions."""

    clock: Callable[[], float] = field(default=time.time)
    margin_seconds: float = LIMIT_MARGIN_SECONDS
    admitted: dict[str, list[float]] = field(default_factory=dict)
    pauses: dict[str, tuple[float, str]] = field(default_factory=dict)

    async def admit(
        self,
        account: str,
        token: str,
        *,
        transactions: int,
        recipients: int,
        limits: SendingLimits,
    ) -> Admitted | MustWait:
        now = self.clock()
        window = MINUTE_SECONDS + self.margin_seconds
        recent = [t for t in self.admitted.get(account, []) if t > now - window]
        per_minute = limits.max_messages_per_minute
        if per_minute is not None and len(recent) + transactions > per_minute:
            at = sorted(recent)[len(recent) + transactions - per_minute - 1] + window
            reason = WaitReason.SENDING_LIMIT
            return MustWait(at - now, reason, _waiting_for(limits, reason))
        self.admitted[account] = [*recent, *([now] * transactions)]
        return Admitted()

    async def pause(
        self, account: str, seconds: float | None, *, daily: bool, reason: str
    ) -> float:
        wanted = seconds if seconds is not None else (DAY_SECONDS if daily else RATE_PAUSE_SECONDS)
        self.pauses[account] = (self.clock() + wanted, reason)
        return wanted
