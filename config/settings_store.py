"""The mail settings in Redis: one current document, versioned, with its secret encrypted."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import SecretStr
from redis.client import Pipeline

from config.errors import InvalidInputError, SettingsNotConfiguredError
from config.mail_settings import (
    MAIL_SETTINGS_ADAPTER,
    SECRET_FIELDS,
    DeliveryMode,
    OAuthSettings,
    SmtpSettings,
    secret_field,
)
from config.redis_keys import PAUSE, SETTINGS, SETTINGS_HISTORY
from config.secret_box import SecretBox

__all__ = [
    "HISTORY_KEY",
    "SETTINGS_KEY",
    "SettingsStore",
    "StoredSettings",
    "changed_fields",
    "decode_document",
    "decode_stored",
    "encode_document",
    "kept_secret",
]

SETTINGS_KEY = SETTINGS.pattern
HISTORY_KEY = SETTINGS_HISTORY.pattern
PAUSE_KEY = PAUSE.pattern  # written by the workers (worker.sending_limits)
HISTORY_LENGTH = 200


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
    field = settings.secret_field
    document = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    secret = settings.secret()
    if secret is not None:
        encrypted_secret = box.encrypt(secret.get_secret_value())
    document[f"{field}_encrypted"] = encrypted_secret
    return json.dumps(document, separators=(",", ":"))


def decode_document(document: str | bytes, box: SecretBox) -> SmtpSettings | OAuthSettings:
    """Settings from their stored JSON, the secret decrypted."""
    raw = json.loads(document)
    field = secret_field(raw)
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

    def public_view(self) -> dict[str, Any] | None:
        """The saved settings as administrators see them: every field but the secret, which
        shows only as ``password_set`` / ``client_secret_set``. Read without decrypting
        anything, so it works even when the secret key is not the one that saved them."""
        fields = self._fields()
        if b"document" not in fields:
            return None
        raw = json.loads(fields[b"document"])
        field = secret_field(raw)
        has_secret = bool(raw.pop(f"{field}_encrypted", None))
        return {
            "version": int(fields[b"version"]),
            "saved_at": float(fields[b"saved_at"]),
            # Settings saved before delivery modes existed deliver, as they always did.
            "delivery_mode": DeliveryMode.DELIVER.value,
            "redirect_to": [],
            **raw,
            f"{field}_set": has_secret,
        }

    def with_stored_secret(
        self, settings: SmtpSettings | OAuthSettings
    ) -> SmtpSettings | OAuthSettings:
        """``settings`` as given, or, when they carry no secret, with the stored one of the
        same protocol and authentication (a form left the secret empty: "saved; leave empty
        to keep"). Raises InvalidInputError naming the secret's field when the settings
        would send it elsewhere than it was saved for (see ``kept_secret``)."""
        encrypted = kept_secret(self._document(), settings)
        if encrypted is None:
            return settings
        secret = SecretStr(self._box.decrypt(encrypted))
        return settings.model_copy(update={settings.secret_field: secret})

    def pause(self) -> dict[str, Any] | None:
        """The current sending account's pause after a provider's quota reply, while it
        lasts: ``account``, ``until`` (unix time) and the provider's ``reason``. A pause of
        an account the settings no longer send through is not this one's."""
        fields: dict[bytes, bytes] = self._redis.hgetall(PAUSE_KEY)  # type: ignore[assignment]
        if b"until" not in fields or float(fields[b"until"]) <= time.time():
            return None
        document = self._document()
        if document is None or fields.get(b"account", b"").decode() != _account_of(document):
            return None
        return {
            "account": fields.get(b"account", b"").decode(),
            "until": float(fields[b"until"]),
            "reason": fields.get(b"reason", b"").decode(),
        }

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest saves, newest first: version, when, by whom, which fields changed."""
        return [json.loads(raw) for raw in self._redis.lrange(HISTORY_KEY, 0, limit - 1)]

    def require(self) -> StoredSettings:
        stored = self.load()
        if stored is None:
            raise SettingsNotConfiguredError(
                "mail settings are not configured; run `outbox settings set smtp ...`"
            )
        return stored

    def save(self, settings: SmtpSettings | OAuthSettings, *, by: str | None = None) -> int:
        """Store ``settings`` as the new version; a missing secret keeps the stored one.

        ``by`` (an API key's name, or the CLI's user) is kept in the history with the names
        of the fields that changed; never their values.
        """
        previous = self._document()
        kept = kept_secret(previous, settings)
        if kept is not None:
            # Keeping a secret this key cannot read would save settings that fail every
            # delivery: refuse now (SecretMismatchError says to enter it again).
            self._box.decrypt(kept)
        document = encode_document(settings, self._box, kept)
        saved_at = time.time()
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(SETTINGS_KEY, "version", 1)
        pipe.hset(SETTINGS_KEY, mapping={"document": document, "saved_at": saved_at})
        version, _ = pipe.execute()
        entry = {
            "version": int(version),
            "saved_at": saved_at,
            "by": by or "unknown",
            "protocol": settings.protocol,
            "changed": changed_fields(previous, settings),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(HISTORY_KEY, json.dumps(entry))
        pipe.ltrim(HISTORY_KEY, 0, HISTORY_LENGTH - 1)
        pipe.execute()
        return int(version)

    def rotate_secret(self) -> bool:
        """Encrypt the stored secret again with the first key; False when none is stored.

        The settings keep their version: nothing a worker uses changes, only the ciphertext.
        A save racing the rotation wins (the rotation reads again and rotates the new one).
        """

        rotated = False

        def rotate(pipe: Pipeline) -> None:
            nonlocal rotated
            rotated = False  # run again after a conflicting write: what it finds now counts
            stored = pipe.hget(SETTINGS_KEY, "document")
            if stored is None:
                return
            document = json.loads(stored)
            field = f"{secret_field(document)}_encrypted"
            if not document.get(field):
                return
            document[field] = self._box.rotate(document[field])
            pipe.multi()
            pipe.hset(SETTINGS_KEY, "document", json.dumps(document, separators=(",", ":")))
            rotated = True

        # redis-py's optimistic transaction: WATCH, read, MULTI/EXEC, again on a conflict.
        self._redis.transaction(rotate, SETTINGS_KEY)
        return rotated

    def _document(self) -> dict[str, Any] | None:
        document = self._redis.hget(SETTINGS_KEY, "document")
        return json.loads(document) if document is not None else None


def changed_fields(
    previous: dict[str, Any] | None, settings: SmtpSettings | OAuthSettings
) -> list[str]:
    """Names of the fields ``settings`` changes from the ``previous`` stored document (the
    secret counts as changed when a new one is given)."""
    field = settings.secret_field
    current = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    if previous is None or previous.get("protocol") != settings.protocol:
        changed = list(current)
    else:
        changed = [name for name, value in current.items() if previous.get(name) != value]
    if settings.secret() is not None:
        changed.append(field)
    return changed


def kept_secret(
    previous: dict[str, Any] | None, settings: SmtpSettings | OAuthSettings
) -> str | None:
    """The one place a stored secret joins submitted settings (Save, Test connection, Send
    test e-mail, the CLI's ``settings set``): the ciphertext of the ``previous`` document's
    secret when ``settings`` carry none and it is theirs to keep, else None.

    A stored secret is kept only while every field it is bound to (``secret_bound_to``: where
    it goes, whose it is) is as it was saved. Otherwise whoever may edit the settings, e.g.
    with a stolen session, could point the server elsewhere (TLS mode none) and receive the
    mailbox's password: InvalidInputError, naming the secret's field, asks for it again.
    """
    if settings.secret() is not None or previous is None:
        return None
    if isinstance(settings, SmtpSettings) and settings.login_mailbox is None:
        return None  # no login: the password would be sent nowhere, so none is kept
    if not _same_secret_field(previous, settings):
        return None
    encrypted: str | None = previous.get(f"{settings.secret_field}_encrypted")
    if not encrypted:
        return None
    changed = set(changed_fields(previous, settings))
    moved = [name for name in settings.secret_bound_to if name in changed]
    if moved:
        raise InvalidInputError(
            _enter_again(moved, settings.secret_field), field=settings.secret_field
        )
    return encrypted


# How a changed field and a secret are named in "... changed: enter the ... again".
_LABELS = {
    "server": "the server",
    "port": "the port",
    "tls": "the TLS mode",
    "accept_any_certificate": "accept any certificate",
    "username": "the username",
    "instance": "the instance",
    "tenant": "the tenant",
    "client_id": "the client ID",
    "scope": "the scope",
    "api_url": "the API URL",
    "password": "password",
    "client_secret": "client secret",
}


def _enter_again(moved: list[str], field: str) -> str:
    """Why the stored secret is not used, e.g. "the server and the port changed: enter the
    password again (...)"."""
    labels = [_LABELS.get(name, name) for name in moved]
    what = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
    secret = _LABELS[field]
    return (
        f"{what} changed: enter the {secret} again (a saved {secret} is used only with the "
        "settings it was saved for)"
    )


def _same_secret_field(document: dict[str, Any], settings: SmtpSettings | OAuthSettings) -> bool:
    """Whether a stored document's secret is the one ``settings`` would use (same protocol,
    same kind of secret): a saved password is never kept as a client secret."""
    return bool(
        document.get("protocol") == settings.protocol
        and secret_field(document) == settings.secret_field
    )


def _account_of(document: dict[str, Any]) -> str:
    """The sending account of a stored document, read without decrypting its secret."""
    public = {k: v for k, v in document.items() if not k.endswith("_encrypted")}
    return MAIL_SETTINGS_ADAPTER.validate_python(public).sending_account
