"""The mail settings in Redis: one current document, versioned, with its secret encrypted."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from config.mail_settings import (
    MAIL_SETTINGS_ADAPTER,
    MASK,
    SECRET_FIELD,
    OAuthSettings,
    SmtpSettings,
)
from config.secret_box import SecretBox
from worker.errors import SettingsNotConfiguredError

__all__ = [
    "SETTINGS_KEY",
    "SettingsStore",
    "StoredSettings",
    "decode_document",
    "decode_stored",
    "encode_document",
]

SETTINGS_KEY = "outbox:settings"


@dataclass(frozen=True, slots=True)
class StoredSettings:
    """The settings as saved, with the version a worker uses to know they changed."""

    version: int
    settings: SmtpSettings | OAuthSettings
    saved_at: float


def encode_document(
    settings: SmtpSettings | OAuthSettings, box: SecretBox, encrypted_secret: str | None
) -> str:
    """JSON for Redis: the secret only as ciphertext (the given one, or the settings' own)."""
    field = SECRET_FIELD[settings.protocol]
    document = settings.model_dump(mode="json", exclude={field})
    secret = settings.secret()
    if secret is not None:
        encrypted_secret = box.encrypt(secret.get_secret_value())
    document[f"{field}_encrypted"] = encrypted_secret
    return json.dumps(document, separators=(",", ":"))


def decode_document(document: str | bytes, box: SecretBox) -> SmtpSettings | OAuthSettings:
    """Settings from their stored JSON, the secret decrypted."""
    raw = json.loads(document)
    field = SECRET_FIELD[raw["protocol"]]
    encrypted = raw.pop(f"{field}_encrypted", None)
    raw[field] = box.decrypt(encrypted) if encrypted else None
    return MAIL_SETTINGS_ADAPTER.validate_python(raw)


def decode_stored(fields: dict[bytes, bytes], box: SecretBox) -> StoredSettings | None:
    """A ``StoredSettings`` from the Redis hash, or None when nothing was saved."""
    if b"document" not in fields:
        return None
    return StoredSettings(
        version=int(fields[b"version"]),
        settings=decode_document(fields[b"document"], box),
        saved_at=float(fields[b"saved_at"]),
    )


class SettingsStore:
    """Reads and writes the current mail settings; each save makes a new version."""

    def __init__(self, client: redis.Redis, box: SecretBox) -> None:
        self._redis = client
        self._box = box

    def _fields(self) -> dict[bytes, bytes]:
        fields: dict[bytes, bytes] = self._redis.hgetall(SETTINGS_KEY)  # type: ignore[assignment]
        return fields

    def load(self) -> StoredSettings | None:
        return decode_stored(self._fields(), self._box)

    def masked_view(self) -> dict[str, Any] | None:
        """The saved settings as ``masked`` shows them, read without decrypting anything
        (so it works even when the secret key is not the one that saved them)."""
        fields = self._fields()
        if b"document" not in fields:
            return None
        raw = json.loads(fields[b"document"])
        field = SECRET_FIELD[raw["protocol"]]
        has_secret = bool(raw.pop(f"{field}_encrypted", None))
        return {
            "version": int(fields[b"version"]),
            "saved_at": float(fields[b"saved_at"]),
            **raw,
            field: MASK if has_secret else None,
            f"has_{field}": has_secret,
        }

    def require(self) -> StoredSettings:
        stored = self.load()
        if stored is None:
            raise SettingsNotConfiguredError(
                "mail settings are not configured; run `outbox settings set smtp ...`"
            )
        return stored

    def save(self, settings: SmtpSettings | OAuthSettings) -> int:
        """Store ``settings`` as the new version; a missing secret keeps the stored one."""
        kept_secret = None
        if settings.secret() is None:
            kept_secret = self._stored_encrypted_secret(settings.protocol)
        document = encode_document(settings, self._box, kept_secret)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(SETTINGS_KEY, "version", 1)
        pipe.hset(SETTINGS_KEY, mapping={"document": document, "saved_at": time.time()})
        version, _ = pipe.execute()
        return int(version)

    def _stored_encrypted_secret(self, protocol: str) -> str | None:
        document = self._redis.hget(SETTINGS_KEY, "document")
        if document is None:
            return None
        raw = json.loads(document)
        if raw.get("protocol") != protocol:
            return None
        secret: str | None = raw.get(f"{SECRET_FIELD[protocol]}_encrypted")
        return secret
