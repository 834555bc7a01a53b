"""Per-key limits of the HTTP API: e-mails per minute and per day (shared by every API
process, measured by Redis' clock) and the recipient domains a key may send to.

Each limit is a generic cell rate (GCRA): one Redis key per API key and period holds the
"theoretical arrival time" of the next e-mail. A limit of N per period lets N through at
once, then one every period / N; nothing is stored per e-mail, so a day's limit of a million
costs what a minute's of ten does. A request is admitted only when *every* limit of its key
admits all its e-mails, and then counted against all of them in the same script: a refused
request uses up nothing.

Its key is ``KEY_QUOTA`` of the registry (``config.redis_keys``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from config.api_keys import ApiKey, KeyLimits
from config.errors import InvalidInputError, RateLimitedError
from config.redis_keys import KEY_QUOTA
from tasks.message_input import MessageInput
from worker.records import DeliveryStore

__all__ = ["KeyQuota", "new_deliveries", "refuse_other_domains"]

_PERIODS = {"minute": 60, "day": 86_400}

# KEYS: one arrival-time key per limit
# ARGV: e-mails asked for, then per limit its period (ms) and its number per period
# -> {0} when admitted (and counted), {1, ms to wait, index of the limit that refused}
_ADMIT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local cost = tonumber(ARGV[1])
local arrivals = {}
local wait, refused = 0, 0
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[2 * i])
  local interval = period / tonumber(ARGV[2 * i + 1])
  local arrival = math.max(tonumber(redis.call('GET', key) or '0'), now) + cost * interval
  local allowed_at = arrival - period
  if allowed_at > now and allowed_at - now > wait then
    wait, refused = allowed_at - now, i
  end
  arrivals[i] = arrival
end
if refused > 0 then return {1, math.ceil(wait), refused} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(arrivals[i]), 'PX', math.ceil(arrivals[i] - now) + 1)
end
return {0}
"""


@dataclass(frozen=True, slots=True)
class _Limit:
    period: str
    per_period: int


class KeyQuota:
    """Admits or refuses a key's e-mails against its own limits."""

    def __init__(self, client: redis.Redis) -> None:
        self._admit = client.register_script(_ADMIT)

    def admit(self, key: ApiKey, count: int) -> None:
        """Count ``count`` e-mails of ``key``, or raise ``RateLimitedError`` (nothing counted)
        while its limits are used up, ``InvalidInputError`` when they can never take them."""
        limits = [
            _Limit(period, per_period)
            for period, per_period in (
                ("minute", key.limits.max_per_minute),
                ("day", key.limits.max_per_day),
            )
            if per_period is not None
        ]
        if not limits or count == 0:
            return
        for limit in limits:
            if count > limit.per_period:
                raise InvalidInputError(
                    f"{count} e-mails in one request, more than the key {key.name!r} may send "
                    f"in a {limit.period} ({limit.per_period}); send smaller batches",
                    field="messages",
                )
        args: list[int] = [count]
        for limit in limits:
            args += [_PERIODS[limit.period] * 1000, limit.per_period]
        reply = self._admit(
            keys=[KEY_QUOTA.name(key_name=key.name, period=limit.period) for limit in limits],
            args=args,
        )
        if int(reply[0]) == 0:
            return
        wait_seconds = int(reply[1]) / 1000
        refused = limits[int(reply[2]) - 1]
        raise RateLimitedError(
            f"the key {key.name!r} may send {refused.per_period} e-mails per "
            f"{refused.period}; try again in {math.ceil(wait_seconds)} s",
            retry_after=wait_seconds,
        )


def refuse_other_domains(message: MessageInput, limits: KeyLimits) -> None:
    """An ``InvalidInputError`` naming the first recipient (``to[1]``, ``bcc[0]``) whose
    domain the key's allow-list does not hold."""
    if not limits.allowed_domains:
        return
    for field in ("to", "cc", "bcc"):
        for index, address in enumerate(getattr(message, field)):
            domain = _ascii_domain(address.rpartition("@")[2])
            if not limits.allows_domain(domain):
                raise InvalidInputError(
                    f"{domain} is not a domain this key may send to "
                    f"({', '.join(limits.allowed_domains)})",
                    field=f"{field}[{index}]",
                )


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode().lower()
    except UnicodeError:
        return domain.lower()  # never on the allow-list, which holds ASCII names only


def new_deliveries(
    deliveries: DeliveryStore, key: ApiKey, messages: list[MessageInput], *, shared: bool = False
) -> int:
    """How many of ``messages`` would be new deliveries: a repeated idempotency key (a
    producer's retry after a lost answer) gives back its delivery and counts against no
    limit. ``shared``: the keys are the shared ones (a schedule run's), not ``key``'s own."""
    if not key.limits.max_per_minute and not key.limits.max_per_day:
        return len(messages)  # no limit to count against: skip the round trip
    used = deliveries.used_idempotency_keys(
        [m.idempotency_key for m in messages], owner=None if shared else key.name
    )
    return used.count(False)
