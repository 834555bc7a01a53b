"""A real Exim (Debian's exim4-daemon-light) on a free loopback port, keeping what it accepts."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from peers.redis_server import free_port

__all__ = [
    "DEFERRED_PREFIX",
    "EXIM",
    "REFUSED_PREFIX",
    "AcceptedMessage",
    "EximServer",
    "running_exim",
]

EXIM = Path("/usr/sbin/exim4")
PACKAGE = "exim4-daemon-light"
# RCPT of a local part starting with these gets 550 / 451 from the RCPT ACL.
REFUSED_PREFIX = "refuse"
DEFERRED_PREFIX = "defer"

# Started by root (as the tests and CI run) with -C, a file Debian's TRUSTED_CONFIG_LIST does
# not name, Exim keeps root because its caller is root; once listening, the daemon and the
# processes receiving mail switch to exim_user/exim_group, set here to the caller's own ids, so
# they can write the spool under pytest's 0700 directories. Nothing is delivered: Debian's
# build never delivers locally as root (FIXED_NEVER_USERS=0), and another user could not reach
# the directory. queue_only keeps each accepted message in the spool, read back with `exim -bp`
# and `exim -Mvc`. PIPECONNECT is not offered, so the "<=" line's pipelining field is the
# documented "L" (used) or "L-" (offered, not used); with PIPELINING not offered there is no
# field, and smtp_enforce_sync (on, Exim's default) drops a client that sends a command before
# the reply to the one before ("554 SMTP synchronization error").
_CONFIGURATION = """\
primary_hostname = exim.test
exim_user = {uid}
exim_group = {gid}
spool_directory = {directory}/spool
log_file_path = {directory}/log/%slog
pid_file_path = {directory}/exim.pid
local_interfaces = 127.0.0.1
daemon_smtp_ports = {port}
daemon_startup_retries = 0
keep_environment =
tls_advertise_hosts = :
pipelining_advertise_hosts = {pipelining_hosts}
pipelining_connect_advertise_hosts = :
rfc1413_hosts = :
queue_only = true
log_selector = +pipelining +smtp_connection +received_recipients +incoming_port +smtp_no_mail
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  deny    message = 5.1.1 refused by the test configuration
          local_parts = ^{refused}
  defer   message = 4.2.0 deferred by the test configuration
          local_parts = ^{deferred}
  accept
"""

# A message of `exim -bp`: "<age> <size> <id> <sender>", then its recipients, indented.
_QUEUE_ENTRY = re.compile(r"^\s*\S+\s+\S+\s+(?P<id>\S+)\s+<(?P<sender>[^>]*)>")


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """A message Exim took (250 after DATA): its envelope and its bytes as Exim keeps them."""

    exim_id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes

    def parsed(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class EximServer:
    """One Exim daemon whose configuration, spool and logs all live in ``directory``; it offers
    PIPELINING unless ``pipelining`` is False."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, *, pipelining: bool = True) -> None:
        self.directory = directory
        self.pipelining = pipelining
        self.port = free_port()
        self.configuration = directory / "exim.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        _require_exim()
        for name in ("spool", "log"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        self.configuration.write_text(self._configuration())
        with (self.directory / "exim.stderr").open("wb") as stderr:
            self._process = subprocess.Popen(
                [str(EXIM), "-C", str(self.configuration), "-bdf"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its receiving children are stopped with it
            )
        self._wait_until_listening(self._process)

    def stop(self) -> None:
        """SIGTERM to Exim's process group, SIGKILL if it has not gone within 5 seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=5)
        else:
            _signal_group(process, signal.SIGKILL)  # a receiving child left over

    def main_log(self) -> str:
        path = self.directory / "log" / "mainlog"
        return path.read_text() if path.exists() else ""

    def accept_line(self, exim_id: str, timeout: float = 5.0) -> str:
        """The main log's ``<=`` line of message ``exim_id`` (waited for: Exim may write it
        right after its reply)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.main_log().splitlines():
                if f" {exim_id} <= " in line:
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(f"no <= line for {exim_id} in:\n{self.main_log()}")
            time.sleep(0.02)

    def accepted(self) -> list[AcceptedMessage]:
        """Every message Exim took, oldest first."""
        return [
            AcceptedMessage(exim_id, sender, recipients, self._exim("-Mvc", exim_id))
            for exim_id, sender, recipients in _queue(self._exim("-bp").decode())
        ]

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[AcceptedMessage]:
        """The accepted messages once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        while len(messages := self.accepted()) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} message(s) in Exim's queue within {timeout}s, got "
                    f"{[(m.mail_from, m.recipients) for m in messages]}"
                )
            time.sleep(0.05)
        return messages

    def _configuration(self) -> str:
        return _CONFIGURATION.format(
            uid=os.getuid(),
            gid=os.getgid(),
            directory=self.directory,
            port=self.port,
            pipelining_hosts="*" if self.pipelining else ":",
            refused=REFUSED_PREFIX,
            deferred=DEFERRED_PREFIX,
        )

    def _exim(self, *arguments: str) -> bytes:
        command = [str(EXIM), "-C", str(self.configuration), *arguments]
        return subprocess.run(command, capture_output=True, check=True, timeout=10).stdout

    def _wait_until_listening(self, process: subprocess.Popen[bytes]) -> None:
        """Until Exim's log says that it listens (so the port is Exim's, not that of another
        process that took it first) and the port accepts a connection."""
        started = f"daemon started: pid={process.pid},"
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if started in self.main_log() and _accepts(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Exim did not start listening on {self.port}: {self._failure()}")

    def _failure(self) -> str:
        texts = [(self.directory / "exim.stderr").read_text(errors="replace")]
        panic = self.directory / "log" / "paniclog"
        if panic.exists():
            texts.append(panic.read_text(errors="replace"))
        lines = dict.fromkeys(line for text in texts for line in text.splitlines() if line.strip())
        return "\n".join(lines) or "no output"

    def __repr__(self) -> str:
        state = "running" if self._process is not None else "stopped"
        return f"<EximServer {self.host}:{self.port} {state}>"


@contextmanager
def running_exim(directory: Path, *, pipelining: bool = True) -> Iterator[EximServer]:
    """Exim listening on a free port of 127.0.0.1 until the block ends."""
    server = EximServer(directory, pipelining=pipelining)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _require_exim() -> None:
    if not os.access(EXIM, os.X_OK):
        raise RuntimeError(
            f"{EXIM} is missing: install Debian's {PACKAGE} package (`make tools` does)"
        )


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _signal_group(process: subprocess.Popen[bytes], number: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, number)


def _queue(listing: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(id, sender, recipients) of each message in ``exim -bp``'s listing."""
    for entry in listing.strip().split("\n\n"):
        first, *rest = entry.splitlines() or [""]
        match = _QUEUE_ENTRY.match(first)
        if match is not None:
            # A recipient delivered already would be marked "D"; none is, with queue_only.
            recipients = tuple(line.split()[-1] for line in rest if line.strip())
            yield match["id"], match["sender"], recipients
