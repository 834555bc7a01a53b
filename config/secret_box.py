"""Encryption of secrets at rest with Fernet, and the key's origin (environment or key file)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from worker.errors import SecretKeyError, SecretMismatchError

__all__ = ["KEY_FILE_NAME", "SecretBox", "load_secret_key"]

log = logging.getLogger(__name__)

KEY_FILE_NAME = "secret.key"


class SecretBox:
    """Encrypts and decrypts short secrets (passwords, client secrets) with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            # from None: the library's message could quote the malformed key.
            raise SecretKeyError(
                "OUTBOX_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretMismatchError(
                "a stored secret cannot be decrypted with the current OUTBOX_SECRET_KEY; "
                "restore the key that saved it, or enter the secret again"
            ) from None


def load_secret_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, else the key file in ``data_dir``, generated once (mode 0600)."""
    if configured:
        return configured.encode()
    key_file = data_dir / KEY_FILE_NAME
    if key_file.exists():
        return key_file.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
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
