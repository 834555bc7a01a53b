"""API keys for the HTTP API: named, with a role and limits, stored only as SHA-256 hashes.

A key is 43 random url-safe characters behind an ``obx_`` prefix (256 bits), so a fast hash
is enough: there is nothing to guess that a slow hash would protect.

Its keys are ``API_KEYS``, ``API_KEY`` and ``API_KEYS_LAST_USED`` of the registry
(``config.redis_keys``).

Revoking a key also ends its page sessions (``config.sessions``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio as aioredis

from config.errors import InvalidInputError, KeyNameTakenError, KeyNotFoundError
from config.redis_keys import API_KEY, API_KEYS, API_KEYS_LAST_USED
from config.sessions import sessions_of_key

__all__ = [
    "KEY_PREFIX",
    "LAST_USED_HASH",
    "ApiKey",
    "ApiKeyStore",
    "AsyncKeyLookup",
    "KeyInfo",
    "KeyLimits",
    "LookedUp",
    "Role",
]

KEY_PREFIX = "obx_"
_KEYS = API_KEYS.pattern
_LAST_USED = API_KEYS_LAST_USED.pattern
LAST_USED_HASH = _LAST_USED  # name -> when the key was last used (unix time, as text)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A domain as a recipient's address spells it after the '@' (IDNA already applied).
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


class Role(StrEnum):
    ADMIN = "admin"  # everything, the settings included
    PRODUCER = "producer"  # send e-mails and read their own deliveries


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one key may send: e-mails per minute and per day, and to which domains.

    ``None`` is no limit; an empty ``allowed_domains`` allows every domain.
    """

    max_per_minute: int | None = None
    max_per_day: int | None = None
    allowed_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_per_minute", "max_per_day"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 10_000_000:
                raise InvalidInputError("must be between 1 and 10000000", field=name)
        for domain in self.allowed_domains:
            if not _DOMAIN.match(domain):
                raise InvalidInputError(
                    f"{domain!r} is not a domain name (lower case, e.g. example.com)",
                    field="allowed_domains",
                )

    @classmethod
    def of(
        cls,
        *,
        max_per_minute: int | None = None,
        max_per_day: int | None = None,
        allowed_domains: tuple[str, ...] | list[str] = (),
    ) -> KeyLimits:
        """Limits as a caller spells them: domains in any case, each once, sorted."""
        domains = sorted({d.strip().lower().rstrip(".") for d in allowed_domains})
        return cls(max_per_minute, max_per_day, tuple(domains))

    def allows_domain(self, domain: str) -> bool:
        return not self.allowed_domains or domain.lower() in self.allowed_domains

    def as_json(self) -> dict[str, Any]:
        return {
            "max_per_minute": self.max_per_minute,
            "max_per_day": self.max_per_day,
            "allowed_domains": list(self.allowed_domains),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> KeyLimits:
        return cls(
            record.get("max_per_minute"),
            record.get("max_per_day"),
            tuple(record.get("allowed_domains", ())),
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Who a valid key belongs to."""

    name: str
    role: Role
    key_hash: str = field(repr=False)  # identifies this key, not the name it was given
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as ``outbox keys list`` shows it: never the key itself."""

    name: str
    role: Role
    created_at: float
    last_used_at: float | None
    limits: KeyLimits

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            **self.limits.as_json(),
        }


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _lookup_key(key_hash: str) -> str:
    return API_KEY.name(sha256=key_hash)


class ApiKeyStore:
    """Creates, checks, lists, limits and revokes API keys."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, name: str, role: Role, limits: KeyLimits = KeyLimits()) -> str:
        """A new key for ``name``; the key is returned once and stored only as a hash."""
        if not _NAME.match(name):
            raise InvalidInputError(
                "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                field="name",
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_hash = _hash(key)
        record = {
            "role": role.value,
            "created_at": time.time(),
            "hash": _lookup_key(key_hash),
            **limits.as_json(),
        }
        if not self._redis.hsetnx(_KEYS, name, json.dumps(record)):
            raise KeyNameTakenError(f"an API key named {name!r} exists; revoke it first")
        self._redis.set(_lookup_key(key_hash), json.dumps(_lookup_record(name, record)))
        return key

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's owner, or None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_hash = _hash(key)
        raw = self._redis.get(_lookup_key(key_hash))
        if raw is None:
            return None
        owner = json.loads(raw)
        self._redis.hset(_LAST_USED, owner["name"], repr(time.time()))
        return ApiKey(owner["name"], Role(owner["role"]), key_hash, KeyLimits.from_json(owner))

    def holder(self, name: str) -> ApiKey | None:
        """The key now named ``name``; None once it is revoked."""
        raw = self._redis.hget(_KEYS, name)
        if raw is None:
            return None
        record = json.loads(raw)
        key_hash = str(record["hash"]).removeprefix(_lookup_key(""))
        return ApiKey(name, Role(record["role"]), key_hash, KeyLimits.from_json(record))

    def any_with_role(self, role: Role) -> bool:
        return any(info.role is role for info in self.list())

    def list(self) -> list[KeyInfo]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(_KEYS)
        pipe.hgetall(_LAST_USED)
        keys, last_used = pipe.execute()
        infos = []
        for raw_name, raw in keys.items():
            record = json.loads(raw)
            used = last_used.get(raw_name)
            infos.append(
                KeyInfo(
                    name=raw_name.decode(),
                    role=Role(record["role"]),
                    created_at=float(record["created_at"]),
                    last_used_at=float(used) if used is not None else None,
                    limits=KeyLimits.from_json(record),
                )
            )
        return sorted(infos, key=lambda info: info.created_at)

    def info(self, name: str) -> KeyInfo:
        for info in self.list():
            if info.name == name:
                return info
        raise KeyNotFoundError(f"no API key named {name!r}")

    def update(self, name: str, **changes: Any) -> KeyInfo:
        """Change a key's limits (``max_per_minute``, ``max_per_day``, ``allowed_domains``);
        the key itself stays the same and so do its sessions."""
        updated: list[KeyLimits] = []

        def apply(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(_KEYS, name)
            if raw is None:
                raise KeyNotFoundError(f"no API key named {name!r}")
            record = json.loads(raw)
            limits = KeyLimits.of(**{**KeyLimits.from_json(record).as_json(), **changes})
            record = {**record, **limits.as_json()}
            pipe.multi()
            pipe.hset(_KEYS, name, json.dumps(record))
            pipe.set(record["hash"], json.dumps(_lookup_record(name, record)))
            updated[:] = [limits]

        # Watched: a revoke or another update between the read and the write starts it over.
        self._redis.transaction(apply, _KEYS)
        [limits] = updated
        return replace(self.info(name), limits=limits)

    def revoke(self, name: str) -> None:
        """The key stops working at once, and so do the page sessions it signed in."""
        raw = self._redis.hget(_KEYS, name)
        if raw is None:
            raise KeyNotFoundError(f"no API key named {name!r}")
        sessions = [
            key.decode() if isinstance(key, bytes) else key
            for key in self._redis.smembers(sessions_of_key(name))
        ]
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(json.loads(raw)["hash"])
        pipe.hdel(_KEYS, name)
        pipe.hdel(_LAST_USED, name)
        pipe.delete(sessions_of_key(name), *sessions)
        pipe.execute()


# KEYS: the key's lookup record, the last-used hash; ARGV: now -> the lookup record, or nil.
_AUTHENTICATE = """
local record = redis.call('GET', KEYS[1])
if record then redis.call('HSET', KEYS[2], cjson.decode(record)['name'], ARGV[1]) end
return record
"""
# How long a looked-up key is believed without asking Redis, for callers that check it again
# in the round trip of their write (``LookedUp.lookup_key`` still holding ``record``).
REMEMBER_SECONDS = 1.0
_REMEMBERED_AT_MOST = 4096  # keys; past this the memory starts over


@dataclass(frozen=True, slots=True)
class LookedUp:
    """A key found valid: its owner, and the lookup record that said so, as Redis holds it
    (a write made on the strength of it can require that it still does)."""

    key: ApiKey
    lookup_key: str
    record: bytes


class AsyncKeyLookup:
    """``ApiKeyStore.authenticate`` on an asynchronous client, in one round trip (the lookup
    and the last use in one script); with ``remembered``, a key looked up less than
    ``REMEMBER_SECONDS`` ago is answered from memory, for a caller that verifies it in its
    own write (the HTTP API's enqueue does, in the same script as the record). Only hashes
    are kept, never a key."""

    def __init__(
        self, client: aioredis.Redis, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._authenticate = client.register_script(_AUTHENTICATE)
        self._clock = clock
        self._remembered: dict[str, tuple[float, LookedUp]] = {}

    async def authenticate(self, key: str, *, remembered: bool = False) -> LookedUp | None:
        """The key's owner, or None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_hash = _hash(key)
        now = self._clock()
        if remembered:
            found = self._remembered.get(key_hash)
            if found is not None and now - found[0] < REMEMBER_SECONDS:
                return found[1]
        lookup_key = _lookup_key(key_hash)
        raw = await self._authenticate(keys=[lookup_key, _LAST_USED], args=[repr(time.time())])
        if raw is None:
            self._remembered.pop(key_hash, None)
            return None
        owner = json.loads(raw)
        looked_up = LookedUp(
            ApiKey(owner["name"], Role(owner["role"]), key_hash, KeyLimits.from_json(owner)),
            lookup_key,
            bytes(raw),
        )
        if len(self._remembered) >= _REMEMBERED_AT_MOST:
            self._remembered.clear()
        self._remembered[key_hash] = (now, looked_up)
        return looked_up

    def forget(self, key_hash: str) -> None:
        """Ask Redis next time: what was remembered of this key no longer holds."""
        self._remembered.pop(key_hash, None)


def _lookup_record(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """What one GET must return to authenticate a request: who, what role, what limits."""
    return {"name": name, "role": record["role"], **KeyLimits.from_json(record).as_json()}
