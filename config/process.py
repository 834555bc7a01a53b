"""Process settings read from the environment (``OUTBOX_*``) with pydantic-settings."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import InvalidEnvironmentError
from config.sentinel_url import SENTINEL_SCHEME, SentinelTarget
from config.sessions import DEFAULT_IDLE_SECONDS, DEFAULT_LIFETIME_SECONDS

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT_SECONDS",
    "ProcessSettings",
    "default_data_dir",
    "private_data_dir",
]

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


def private_data_dir(data_dir: Path) -> Path:
    """``data_dir``, created 0700 if missing, tightened to 0700 if looser; refused when another
    user owns it (the embedded Redis' files hold queued e-mails, the key file the key)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = data_dir.stat()
    if found.st_uid != os.geteuid():
        # A shared /tmp or working directory: whoever made it could read or swap our files.
        raise InvalidEnvironmentError(
            f"the data directory {data_dir.resolve()} is owned by uid {found.st_uid}, "
            f"not by you (uid {os.geteuid()}); set OUTBOX_DATA_DIR"
        )
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o077:
        data_dir.chmod(0o700)
        log.warning(
            "the data directory %s was readable by others (mode %04o): changed it to 0700",
            data_dir.resolve(),
            mode,
        )
    return data_dir


class ProcessSettings(BaseSettings):
    """Everything a process needs to start: where Redis is, the secret key, retry knobs."""

    model_config = SettingsConfigDict(env_prefix="OUTBOX_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL, or redis+sentinel://HOST:PORT[,...]/"
        "MASTER_NAME[/DB] for a Redis Sentinel deployment; unset starts an embedded Redis.",
    )
    sentinel_password: SecretStr | None = Field(
        default=None,
        description="The sentinels' password (requirepass of redis-sentinel), if they have one; "
        "Redis' own goes in the redis+sentinel:// URL.",
    )
    redis_min_replicas: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Replicas that must hold an enqueue (and a delivery's outcome) before it "
        "is acknowledged (Redis WAIT); unset is 1 with Sentinel, 0 otherwise.",
    )
    redis_replica_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=1.5,
        description="How long an enqueue waits for the replicas (WAIT) before it is refused; "
        "below the Redis clients' 2-second read timeout.",
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
    max_request_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Largest HTTP request body, refused with 413 before it is read; unset is "
        "three times OUTBOX_MAX_MESSAGE_BYTES plus 1 MiB: JSON may spell each non-ASCII "
        "character of the largest message as a six-byte \\u escape.",
    )
    max_batch_request_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Largest body of POST /api/emails/batch, which holds many messages; "
        "unset is 128 MiB, or the single request's limit when that is larger.",
    )
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
    lookahead: bool = Field(
        default=False,
        description="A worker process takes its next job itself while a job's last e-mails "
        "are in flight (no idle lanes between jobs). Off by default: a high-priority e-mail "
        "may then wait behind one more job per process.",
    )
    # How long the sending account pauses after a provider's rate quota or throttling reply
    # that states no wait (Exchange Online's SubmissionQuotaExceeded: its per-minute quota).
    provider_pause_seconds: float = Field(default=60.0, gt=0, le=86_400)
    message_id_domain: str = Field(default_factory=socket.gethostname)
    session_idle_seconds: int = Field(
        default=DEFAULT_IDLE_SECONDS,
        ge=60,
        description="A page session ends after this long unused.",
    )
    session_lifetime_seconds: int = Field(
        default=DEFAULT_LIFETIME_SECONDS,
        ge=60,
        description="A page session ends this long after sign-in, however much it is used.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Comma-separated addresses or networks of the reverse proxies whose "
        "X-Forwarded-Proto and X-Forwarded-For the API believes; unset trusts none.",
    )

    @field_validator("template_dir")
    @classmethod
    def _an_existing_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("redis_url")
    @classmethod
    def _a_readable_sentinel_url(cls, value: str | None) -> str | None:
        if value and value.startswith(f"{SENTINEL_SCHEME}://"):
            SentinelTarget.parse(value)  # its ValueError names the part, never the password
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _unset_data_dir_is_the_default(cls, value: object) -> object:
        return default_data_dir(os.environ) if value == "" else value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            # uvicorn would take a malformed entry as a literal host name and trust nobody.
            if entry != "*":
                try:
                    ipaddress.ip_network(entry)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network") from None
        return ",".join(entries)

    @model_validator(mode="after")
    def _retry_cap_at_least_base(self) -> ProcessSettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("OUTBOX_RETRY_MAX_SECONDS must be >= OUTBOX_RETRY_BASE_SECONDS")
        return self

    @property
    def request_bytes_limit(self) -> int:
        return self.max_request_bytes or 3 * self.max_message_bytes + 1024 * 1024

    @property
    def batch_request_bytes_limit(self) -> int:
        return self.max_batch_request_bytes or max(128 * 1024 * 1024, self.request_bytes_limit)

    @property
    def sentinel_password_text(self) -> str | None:
        return self.sentinel_password.get_secret_value() if self.sentinel_password else None

    @property
    def min_replicas(self) -> int:
        """OUTBOX_REDIS_MIN_REPLICAS, or its default: 1 with Sentinel (a failover promotes a
        replica, which must hold what was acknowledged), 0 for a single server."""
        if self.redis_min_replicas is not None:
            return self.redis_min_replicas
        return 1 if (self.redis_url or "").startswith(f"{SENTINEL_SCHEME}://") else 0

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_days * 86400)
