"""Process settings read from the environment (``OUTBOX_*``) with pydantic-settings."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_VISIBILITY_TIMEOUT_SECONDS", "ProcessSettings", "default_data_dir"]

log = logging.getLogger(__name__)

# The Redis broker redelivers an unacknowledged task after this many seconds. outbox holds no
# task back with a countdown (retries are due times in Redis, published by the sweeper), so
# it only bounds how long a task reserved by a dead worker waits before the broker gives it
# out again; the sweeper finds such deliveries much sooner.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600
DEFAULT_MAX_RECIPIENTS = 500


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/outbox``, else ``~/.local/share/outbox`` (the XDG base directories);
    ``./.outbox`` when an earlier version left its data there."""
    legacy = Path(".outbox")
    if (legacy / "secret.key").exists() or (legacy / "redis.sock").exists():
        # Its Redis holds the queue and the settings, its key their secrets: keep using it
        # rather than start empty elsewhere.
        log.warning(
            "using the data directory %s of an earlier outbox version; move it to %s "
            "or set OUTBOX_DATA_DIR",
            legacy.resolve(),
            _xdg_data_dir(environ),
        )
        return legacy
    return _xdg_data_dir(environ)


def _xdg_data_dir(environ: Mapping[str, str]) -> Path:
    xdg_data_home = environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg_data_home):  # the specification ignores a relative one
        return Path(xdg_data_home) / "outbox"
    try:
        return Path.home() / ".local/share/outbox"
    except RuntimeError:
        # No home directory (a container running as an arbitrary user): one per user.
        return Path(tempfile.gettempdir()) / f"outbox-{os.getuid()}"


class ProcessSettings(BaseSettings):
    """Everything a process needs to start: where Redis is, the secret key, retry knobs."""

    model_config = SettingsConfigDict(env_prefix="OUTBOX_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; unset starts an embedded Redis.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet keys for secrets at rest, comma-separated: the first encrypts, "
        "all decrypt (rotation); unset generates one in the data directory.",
    )
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(os.environ),
        description="Embedded Redis and generated key; one fixed place per user by default, "
        "so every command finds the same Redis wherever it is run from.",
    )
    template_dir: Path | None = Field(
        default=None,
        description="Directory of report templates (subject.txt, report.html, report.txt) "
        "that replace outbox's own; a template it lacks comes from outbox.",
    )
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of extra CAs trusted for TLS to mail servers."
    )
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    retention_days: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_recipients: int = Field(
        default=DEFAULT_MAX_RECIPIENTS,
        ge=1,
        description="To, Cc and Bcc together, per message (Exchange's and Graph's usual limit).",
    )
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_max_connections: int = Field(default=4, ge=1, le=100)
    graph_max_concurrency: int = Field(
        default=4, ge=1, le=100, description="Graph requests in flight per mailbox and process."
    )
    graph_timeout_seconds: float = Field(default=30.0, gt=0)
    graph_save_to_sent_items: bool = False
    claim_lease_seconds: float = Field(
        default=30.0,
        ge=3,
        description="A claim's lease, renewed while its attempt runs; a dead worker's "
        "deliveries are taken over about this long after it died.",
    )
    sweep_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often one worker process looks for due retries, expired claims "
        "and stranded deliveries.",
    )
    stranded_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A queued delivery no worker took this long after its task was "
        "published is published again, once its task can no longer be in the queue.",
    )
    visibility_timeout_seconds: int = Field(default=DEFAULT_VISIBILITY_TIMEOUT_SECONDS, ge=60)
    # How long the sending account pauses after a provider's rate quota or throttling reply
    # that states no wait (Exchange Online's SubmissionQuotaExceeded: its per-minute quota).
    provider_pause_seconds: float = Field(default=60.0, gt=0, le=86_400)
    message_id_domain: str = Field(default_factory=socket.gethostname)

    @field_validator("template_dir")
    @classmethod
    def _an_existing_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _unset_data_dir_is_the_default(cls, value: object) -> object:
        return default_data_dir(os.environ) if value == "" else value

    @model_validator(mode="after")
    def _retry_cap_at_least_base(self) -> ProcessSettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("OUTBOX_RETRY_MAX_SECONDS must be >= OUTBOX_RETRY_BASE_SECONDS")
        return self

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_days * 86400)
