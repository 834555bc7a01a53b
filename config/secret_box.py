"""Encryption of secrets at rest with Fernet keys that can be rotated, and where the keys come
from (the environment or a key file)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.errors import SecretKeyError, SecretMismatchError
from config.process import private_data_dir

__all__ = ["KEY_FILE_NAME", "SecretBox", "load_secret_keys"]

log = logging.getLogger(__name__)

KEY_FILE_NAME = "secret.key"


class SecretBox:
    """Encrypts short secrets (passwords, client secrets) with the first of its Fernet keys
    and decrypts with any of them, so keys can be rotated: put the new key first, run
    ``outbox secrets rotate``, then drop the old one."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("OUTBOX_SECRET_KEY holds no key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # from None: the library's message could quote the malformed key.
                which = f"key {position} of {len(keys)}" if len(keys) > 1 else "the key"
                raise SecretKeyError(
                    f"OUTBOX_SECRET_KEY: {which} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise _mismatch() from None

    def rotate(self, token: str) -> str:
        """``token`` encrypted again with the first key (readable with any key)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise _mismatch() from None


def _mismatch() -> SecretMismatchError:
    return SecretMismatchError(
        "a stored secret cannot be decrypted with any key of OUTBOX_SECRET_KEY; "
        "add the key that saved it, or enter the secret again"
    )


def load_secret_keys(configured: str | None, data_dir: Path) -> list[bytes]:
    """The configured keys (comma-separated, the first encrypts), else the key file in
    ``data_dir``, generated once (mode 0600)."""
    if configured:
        return [key.strip().encode() for key in configured.split(",") if key.strip()]
    return [_key_file(data_dir)]


def _key_file(data_dir: Path) -> bytes:
    key_file = private_data_dir(data_dir) / KEY_FILE_NAME
    if key_file.exists():
        return key_file.read_bytes().strip()
    key = Fernet.generate_key()
    # Written whole under another name, then linked into place: a process starting at the
    # same moment sees either no key file or a complete one, and the first link wins.
    partial = data_dir / f".{KEY_FILE_NAME}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    try:
        os.link(partial, key_file)
    except FileExistsError:
        return key_file.read_bytes().strip()
    finally:
        partial.unlink()
    log.warning(
        "OUTBOX_SECRET_KEY is not set: generated a key in %s. Back it up, or set "
        "OUTBOX_SECRET_KEY for every process; without it stored secrets cannot be read.",
        key_file,
    )
    return key
