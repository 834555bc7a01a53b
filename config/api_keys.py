"""API keys for the HTTP API: named, with a role, stored only as SHA-256 hashes in Redis.

A key is 43 random url-safe characters behind an ``obx_`` prefix (256 bits), so a fast hash
is enough: there is nothing to guess that a slow hash would protect.

Redis keys::

    outbox:apikeys                hash    name -> {"role", "created_at", "hash"} (JSON)
    outbox:apikey:{sha256 of key} string  {"name", "role"} (JSON): one GET authenticates
    outbox:apikeys:last-used      hash    name -> unix time of the last request
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import redis

from worker.errors import InvalidInputError, KeyNameTakenError, KeyNotFoundError

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeyStore", "KeyInfo", "Role"]

KEY_PREFIX = "obx_"
_KEYS = "outbox:apikeys"
_LAST_USED = "outbox:apikeys:last-used"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Role(StrEnum):
    ADMIN = "admin"  # everything, the settings included
    PRODUCER = "producer"  # send e-mails and read their status


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Who a valid key belongs to."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as ``outbox keys list`` shows it: never the key itself."""

    name: str
    role: Role
    created_at: float
    last_used_at: float | None


def _lookup_key(key: str) -> str:
    return f"outbox:apikey:{hashlib.sha256(key.encode()).hexdigest()}"


class ApiKeyStore:
    """Creates, checks, lists and revokes API keys."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, name: str, role: Role) -> str:
        """A new key for ``name``; the key is returned once and stored only as a hash."""
        if not _NAME.match(name):
            raise InvalidInputError(
                "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                field="name",
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        lookup = _lookup_key(key)
        record = {"role": role.value, "created_at": time.time(), "hash": lookup}
        if not self._redis.hsetnx(_KEYS, name, json.dumps(record)):
            raise KeyNameTakenError(f"an API key named {name!r} exists; revoke it first")
        self._redis.set(lookup, json.dumps({"name": name, "role": role.value}))
        return key

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's owner, or None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX):
            return None
        raw = self._redis.get(_lookup_key(key))
        if raw is None:
            return None
        owner = json.loads(raw)
        self._redis.hset(_LAST_USED, owner["name"], repr(time.time()))
        return ApiKey(owner["name"], Role(owner["role"]))

    def role_of(self, name: str) -> Role | None:
        """The role of the key named ``name``; None once it is revoked."""
        raw = self._redis.hget(_KEYS, name)
        return Role(json.loads(raw)["role"]) if raw is not None else None

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
                )
            )
        return sorted(infos, key=lambda info: info.created_at)

    def revoke(self, name: str) -> None:
        """The key stops working at once."""
        raw = self._redis.hget(_KEYS, name)
        if raw is None:
            raise KeyNotFoundError(f"no API key named {name!r}")
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(json.loads(raw)["hash"])
        pipe.hdel(_KEYS, name)
        pipe.hdel(_LAST_USED, name)
        pipe.execute()
