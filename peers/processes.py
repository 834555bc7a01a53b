"""Subprocesses the end-to-end tests run: the outbox CLI and long-running services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "BIN",
    "OUTBOX",
    "ROOT",
    "SenderKiller",
    "Service",
    "child_pids",
    "pid_of_connection",
    "rss_mb",
    "run_outbox",
]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment outbox is installed in
OUTBOX = str(BIN / "outbox")


def _environment(env: dict[str, str]) -> dict[str, str]:
    # The Procfile names bare `outbox`, as a user's shell with the environment active does.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}


def run_outbox(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one ``outbox`` command as a user would, capturing its output."""
    return subprocess.run(
        [OUTBOX, *args],
        env=_environment(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


class Service:
    """A long-running command (in its own process group) whose output is collected."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            [str(BIN / command[0]) if (BIN / command[0]).exists() else command[0], *command[1:]],
            env=_environment(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._process.poll() is not None

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for_output(self, *needles: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(needle in self.output for needle in needles):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never printed {needles}; output:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._reader.join(timeout=5)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a Celery worker's pool processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pid_of_connection(local_port: int, remote_port: int) -> int | None:
    """The process that owns the loopback TCP connection from ``local_port`` to ``remote_port``
    (Linux /proc). Both ports: Linux gives one ephemeral port to several connections with
    different destinations, so the local port alone may name another process's socket."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote = (int(field.rsplit(":", 1)[1], 16) for field in fields[1:3])
            if (local, remote) == (local_port, remote_port):
                inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in wanted:
                    return int(fd_dir.parent.name)
        except OSError:
            continue  # it exited, or is not ours to read
    return None


class SenderKiller:
    """An SMTP peer's ``on_data`` (the peer on ``server_port``) that SIGKILLs the process
    sending to ``poison``, as a message whose sending crashes its process would (a segfault,
    ``os._exit``); ``kills`` lists the processes killed. With ``times``, only the first
    ``times`` sends are killed and later ones accepted."""

    def __init__(self, poison: str, *, server_port: int, times: int | None = None) -> None:
        self.poison = poison
        self.server_port = server_port
        self.times = times
        self.kills: list[int] = []

    def __call__(self, recipients: tuple[str, ...], client_port: int) -> str | None:
        if self.poison not in recipients:
            return None
        if self.times is not None and len(self.kills) >= self.times:
            return None
        pid = pid_of_connection(client_port, self.server_port)
        if pid is not None and pid != os.getpid():  # never the test itself
            self.kills.append(pid)
            os.kill(pid, signal.SIGKILL)
        return "451 the sender died"
