"""Server-side sessions of the signed-in page: a random cookie token, its CSRF token, in Redis.

Only a hash of the cookie's token is stored, so a Redis dump cannot be replayed as a cookie.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

import redis

__all__ = ["SESSION_SECONDS", "Session", "SessionStore"]

SESSION_SECONDS = 8 * 3600  # a working day; every request made with it extends it


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str  # the admin key that signed in; revoking it ends the session
    csrf_token: str


def _key(token: str) -> str:
    return f"outbox:session:{hashlib.sha256(token.encode()).hexdigest()}"


class SessionStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, key_name: str) -> tuple[str, Session]:
        """A new session; the token goes into the cookie and nowhere else."""
        token = secrets.token_urlsafe(32)
        session = Session(key_name, secrets.token_urlsafe(32))
        record = {"key_name": session.key_name, "csrf_token": session.csrf_token}
        self._redis.set(_key(token), json.dumps(record), ex=SESSION_SECONDS)
        return token, session

    def get(self, token: str) -> Session | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(_key(token))
        pipe.expire(_key(token), SESSION_SECONDS)
        raw, _ = pipe.execute()
        if raw is None:
            return None
        record = json.loads(raw)
        return Session(record["key_name"], record["csrf_token"])

    def delete(self, token: str) -> None:
        self._redis.delete(_key(token))
