"""The OUTBOX_* environment of a test process: its own Redis, key, data dir, CA and fast retries."""

from __future__ import annotations

from pathlib import Path

import redis
import trustme
from cryptography.fernet import Fernet

from config.process import ProcessSettings
from tasks.context import OutboxContext


def outbox_environment(
    redis_url: str, directory: Path, certificate_authority: trustme.CA, **overrides: str
) -> dict[str, str]:
    ca_file = directory / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    return {
        "OUTBOX_REDIS_URL": redis_url,
        "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
        "OUTBOX_DATA_DIR": str(directory / "data"),
        "OUTBOX_CA_BUNDLE": str(ca_file),
        "OUTBOX_RETRY_BASE_SECONDS": "0.2",
        "OUTBOX_RETRY_MAX_SECONDS": "1",
        "OUTBOX_MAX_ATTEMPTS": "4",
        "OUTBOX_SMTP_TIMEOUT_SECONDS": "5",
        # Due retries are published by the sweeper: sweep often, so fast retries stay fast.
        "OUTBOX_SWEEP_INTERVAL_SECONDS": "0.1",
        # A provider's quota reply without a stated wait pauses the account this long.
        "OUTBOX_PROVIDER_PAUSE_SECONDS": "1",
        **overrides,
    }


def fresh_environment(
    redis_url: str, directory: Path, certificate_authority: trustme.CA, **overrides: str
) -> dict[str, str]:
    """``outbox_environment`` on an emptied Redis database: for a module's real processes."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return outbox_environment(redis_url, directory, certificate_authority, **overrides)


def context_of(env: dict[str, str]) -> OutboxContext:
    """The context a process with the OUTBOX_* environment ``env`` would build."""
    fields = {name.removeprefix("OUTBOX_").lower(): value for name, value in env.items()}
    return OutboxContext.from_settings(ProcessSettings.model_validate(fields))
