"""Server-side sessions of the signed-in page: a random cookie token, its CSRF token, in Redis.

A session belongs to one API key, not to a name: it holds the hash of the key that signed
in, so a key created again under the same name (or the ``admin`` key a restart creates when
none is left) never revives an old cookie. It ends after ``idle_seconds`` without a request
and, whatever its use, ``lifetime_seconds`` after sign-in. Only a hash of the cookie's token
is stored, so a Redis dump cannot be replayed as a cookie.

Its keys are ``SESSION`` and ``SESSIONS_OF`` of the registry (``config.redis_keys``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from config.redis_keys import SESSION, SESSIONS_OF

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_LIFETIME_SECONDS",
    "Session",
    "SessionStore",
    "sessions_of_key",
]

DEFAULT_IDLE_SECONDS = 2 * 3600
DEFAULT_LIFETIME_SECONDS = 12 * 3600  # a working day, however busy


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    key_hash: str  # of the admin key that signed in: only that key's validity keeps it alive
    csrf_token: str
    created_at: float


def _session_key(token: str) -> str:
    return SESSION.name(sha256=hashlib.sha256(token.encode()).hexdigest())


def sessions_of_key(key_name: str) -> str:
    """The set of a key's sessions (the key store ends them when it revokes the key)."""
    return SESSIONS_OF.name(key_name=key_name)


class SessionStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        idle_seconds: int = DEFAULT_IDLE_SECONDS,
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.idle_seconds = idle_seconds
        self.lifetime_seconds = lifetime_seconds
        self._clock = clock

    def create(self, key_name: str, key_hash: str) -> tuple[str, Session]:
        """A new session; the token goes into the cookie and nowhere else."""
        token = secrets.token_urlsafe(32)
        session = Session(key_name, key_hash, secrets.token_urlsafe(32), self._clock())
        record = {
            "key_name": session.key_name,
            "key_hash": session.key_hash,
            "csrf_token": session.csrf_token,
            "created_at": session.created_at,
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_session_key(token), json.dumps(record), ex=self._expiry(session))
        pipe.sadd(sessions_of_key(key_name), _session_key(token))
        pipe.expire(sessions_of_key(key_name), self.lifetime_seconds)
        pipe.execute()
        return token, session

    def get(self, token: str) -> Session | None:
        """The session of a cookie's token while it is neither idle too long nor too old.

        Reading does not extend it: the caller checks the session's key first, then calls
        ``touch`` (a session whose key was revoked must not be kept alive by its polling).
        """
        raw = self._redis.get(_session_key(token))
        if raw is None:
            return None
        record = json.loads(raw)
        if "key_hash" not in record:
            return None  # from before sessions were bound to a key: sign in again
        session = Session(
            record["key_name"],
            record["key_hash"],
            record["csrf_token"],
            float(record["created_at"]),
        )
        return session if self._expiry(session) > 0 else None

    def touch(self, token: str, session: Session) -> None:
        """Extend an idle session by another ``idle_seconds``, never past its lifetime."""
        self._redis.expire(_session_key(token), max(1, self._expiry(session)))

    def cookie_max_age(self, session: Session) -> int:
        """Seconds the cookie may live: the rest of the session's lifetime."""
        return max(0, round(session.created_at + self.lifetime_seconds - self._clock()))

    def delete(self, token: str) -> None:
        self._redis.delete(_session_key(token))

    def _expiry(self, session: Session) -> int:
        left = session.created_at + self.lifetime_seconds - self._clock()
        return int(min(self.idle_seconds, left))
