"""The current mail settings for a worker process, re-read only when their version changes."""

from __future__ import annotations

import redis.asyncio as aioredis

from config.errors import ConfigurationError, SecretMismatchError
from config.secret_box import SecretBox
from config.settings_store import SETTINGS_KEY, StoredSettings, decode_stored

__all__ = ["SettingsCache"]


class SettingsCache:
    """Keeps the last decoded settings; the claim already told us the current version."""

    def __init__(self, client: aioredis.Redis, box: SecretBox) -> None:
        self._redis = client
        self._box = box
        self._current: StoredSettings | None = None

    async def get(self, version: int) -> StoredSettings | None:
        if version == 0:
            return None
        if self._current is not None and self._current.version == version:
            return self._current
        fields: dict[bytes, bytes] = await self._redis.hgetall(SETTINGS_KEY)  # type: ignore[assignment]
        try:
            self._current = decode_stored(fields, self._box)
        except SecretMismatchError as exc:
            raise ConfigurationError(str(exc)) from exc
        return self._current
