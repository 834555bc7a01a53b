"""A real Redis Sentinel deployment on loopback (primary, replicas, sentinels) for fault tests."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.redis_location import redis_server_binary
from peers.redis_server import free_port

__all__ = [
    "RedisNode",
    "SentinelCluster",
    "SentinelNode",
]

HOST = "127.0.0.1"
# Replies from a live loopback server come in milliseconds; a longer wait means it is stopped.
PROBE_TIMEOUT_SECONDS = 1.0
POLL_SECONDS = 0.05
START_TIMEOUT_SECONDS = 10.0
# SENTINEL DEBUG (Redis 7.0+) timers of ``fast_timers``: INFO to every instance each second
# (10 s by default) and hello messages each half second (2 s), so sentinels find each other
# in about a second and demote a returning old primary 2 s after it reports itself master
# (8 s by default, seen on an INFO every 10 s: about 10 s).
FAST_TIMERS = {"info-period": 1000, "publish-period": 500}

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
# Loaded once here: loading a library in the forked child of a threaded process can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it dies, so not even
    a test run killed outright (pytest-timeout's thread method, SIGKILL) leaves it behind."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _quoted(value: str | Path) -> str:
    """A value for a Redis configuration line (paths and passwords may hold spaces)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pairs(reply: dict[Any, Any] | Iterable[Any]) -> dict[str, str]:
    """One instance's state in a SENTINEL reply as a dict: redis-py 8 parses it into one,
    older versions give the flat ``[key, value, key, value, ...]`` of RESP2."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    items = [str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


class _NotYetError(Exception):
    """Raised by a check of :func:`_wait_for`: not there yet, and what was seen instead."""


def _wait_for(what: str, check: Callable[[], T], timeout: float, *, hint: str = "") -> T:
    """Call ``check`` until it returns instead of raising ``_NotYetError`` (or a Redis or socket
    error, or ``LookupError``: no sentinel answers); after ``timeout`` seconds raise
    ``TimeoutError`` naming what was awaited and what was last seen."""
    start = time.monotonic()
    while True:
        try:
            return check()
        except (_NotYetError, redis.RedisError, OSError, LookupError) as error:
            last = str(error) if isinstance(error, _NotYetError) else repr(error)
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"waited {timeout:g} s for {what}; last seen: {last}{hint and '; ' + hint}"
            )
        time.sleep(POLL_SECONDS)


class _ServerProcess:
    """One ``redis-server`` process on a fixed loopback port, run from a config file in its
    own directory (which Redis rewrites, so a restart keeps what Sentinel told it), its
    stdout and stderr appended to ``log_path``."""

    kind = "redis"

    def __init__(self, directory: Path, port: int, *, password: str | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port
        self.password = password
        self.config_path = directory / f"{self.kind}.conf"
        self.log_path = directory / f"{self.kind}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self.running else "down"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int | None:
        """The process id while it runs (or is stopped), else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """The process exists (it may be stopped with SIGSTOP)."""
        return self._process is not None and self._process.poll() is None

    @property
    def stopped(self) -> bool:
        return self._stopped and self.running

    def _command(self) -> list[str]:
        return [redis_server_binary(), str(self.config_path)]

    def client(self, **options: Any) -> redis.Redis:
        """A client of this process (decoded replies, short timeouts unless overridden)."""
        settings: dict[str, Any] = {
            "host": HOST,
            "port": self.port,
            "password": self.password,
            "decode_responses": True,
            "socket_timeout": PROBE_TIMEOUT_SECONDS,
            "socket_connect_timeout": PROBE_TIMEOUT_SECONDS,
            # One try: redis-py's default retries turn each probe of a stopped process into
            # a quarter of a minute.
            "retry": Retry(NoBackoff(), 0),
        }
        return redis.Redis(**(settings | options))

    def _probe(self, command: Callable[[redis.Redis], T]) -> T:
        client = self.client()
        try:
            return command(client)
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start the process (again) on its port and directory; returns once it answers PING."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_parent,
            )
        self._stopped = False

        def answers() -> None:
            if not self.running:
                raise RuntimeError(
                    f"{self.kind} on port {self.port} exited at start; {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            self._probe(lambda client: client.ping())

        _wait_for(f"{self.kind} on port {self.port} to answer PING", answers, timeout)
        self._started()

    def _started(self) -> None:
        """Called once a started process answers."""

    def _signal(self, number: signal.Signals) -> None:
        if not self.running or self._process is None:
            raise RuntimeError(f"{self!r} is not running")
        self._process.send_signal(number)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; waits until the process is gone."""
        self._signal(signal.SIGKILL)
        self._reap(timeout=START_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """SIGSTOP: the process hangs with its sockets open, as a frozen VM or a long pause."""
        self._signal(signal.SIGSTOP)
        self._stopped = True

    def cont(self) -> None:
        """SIGCONT after :meth:`stop`."""
        self._signal(signal.SIGCONT)
        self._stopped = False

    def terminate(self, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """SIGTERM, as a service manager stops it (a stopped process is continued first);
        SIGKILL if it has not exited within ``timeout``."""
        if not self.running:
            return
        if self._stopped:
            self.cont()
        self._signal(signal.SIGTERM)
        try:
            self._reap(timeout=timeout)
        except TimeoutError:
            self.close()

    def close(self) -> None:
        """Make sure the process is gone (SIGCONT, SIGKILL, wait); never raises for a process
        that has already exited."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            for number in (signal.SIGCONT, signal.SIGKILL):
                try:
                    process.send_signal(number)
                except ProcessLookupError:
                    break
            process.wait()
        self._stopped = False

    def _reap(self, *, timeout: float) -> None:
        assert self._process is not None
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(
                f"{self.kind} on port {self.port} did not exit within {timeout:g} s"
            ) from error
        self._stopped = False


class RedisNode(_ServerProcess):
    """A data node: the primary or a replica, append-only and fsynced on every write so a
    kill or a restart loses nothing it acknowledged."""

    kind = "redis"

    def __init__(
        self, directory: Path, port: int, *, password: str | None, primary_port: int | None
    ) -> None:
        super().__init__(directory, port, password=password)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {_quoted(directory)}",
            'save ""',
            "appendonly yes",
            "appendfsync always",
            # A replica's first sync streams from memory at once instead of after 5 s.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
        if password is not None:
            lines += [f"requirepass {_quoted(password)}", f"masterauth {_quoted(password)}"]
        if primary_port is not None:
            lines.append(f"replicaof {HOST} {primary_port}")
        # Written once: later starts use it as Redis rewrote it (CONFIG REWRITE on REPLICAOF).
        self.config_path.write_text("\n".join(lines) + "\n")

    def replication(self) -> dict[str, Any]:
        """``INFO replication`` (raises if the node does not answer)."""
        info: dict[str, Any] = self._probe(lambda client: client.info("replication"))
        return info

    def role(self) -> str:
        """``master`` or ``slave`` (the first item of ``ROLE``)."""
        reply = self._probe(lambda client: client.role())
        return str(reply[0])


def _online_replicas(primary: RedisNode) -> list[int]:
    info = primary.replication()
    ports = []
    for index in range(int(info.get("connected_slaves", 0))):
        replica = info.get(f"slave{index}", {})
        if replica.get("state") == "online":
            ports.append(int(replica["port"]))
    return sorted(ports)


class SentinelNode(_ServerProcess):
    """A sentinel (``redis-server CONF --sentinel``) with a writable config file it rewrites
    with what it learns, so a restart remembers the current primary and its peers."""

    kind = "sentinel"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        master_name: str,
        primary_port: int,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        password: str | None,
        sentinel_password: str | None,
        fast_timers: bool = False,
    ) -> None:
        super().__init__(directory, port, password=sentinel_password)
        self.fast_timers = fast_timers
        # Whether this redis-server took FAST_TIMERS at its last start (6.2 has no DEBUG).
        self.fast_timers_applied = False
        name = _quoted(master_name)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {_quoted(directory)}",
            "sentinel resolve-hostnames no",
            "sentinel announce-hostnames no",
            f"sentinel monitor {name} {HOST} {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if password is not None:
            lines.append(f"sentinel auth-pass {name} {_quoted(password)}")
        if sentinel_password is not None:
            # Sentinels talk to each other with the password they ask of their own clients.
            lines += [
                f"requirepass {_quoted(sentinel_password)}",
                f"sentinel sentinel-pass {_quoted(sentinel_password)}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [*super()._command(), "--sentinel"]

    def _started(self) -> None:
        # Runtime settings, not in the config file: set again on every start.
        self.fast_timers_applied = False
        if self.fast_timers:
            settings = [str(item) for pair in FAST_TIMERS.items() for item in pair]
            try:
                self.sentinel("DEBUG", *settings)
            except redis.ResponseError:
                return  # before Redis 7.0: Sentinel's own timers
            self.fast_timers_applied = True

    def sentinel(self, *args: str) -> Any:
        """One ``SENTINEL ...`` command, its raw reply."""
        return self._probe(
            lambda client: client.execute_command("SENTINEL", *args)  # type: ignore[no-untyped-call]
        )


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback ports, each
    process with its own directory (config, append-only files, log) under ``directory``.

    ``with SentinelCluster(tmp_path) as cluster:`` starts everything and returns once every
    sentinel knows the primary, every replica and every other sentinel (so a failover can
    happen); leaving the block kills every process. Timings are short for tests: a primary
    unreachable for ``down_after_ms`` is replaced in a few seconds; with ``fast_timers``
    (on Redis 7.0+, see ``FAST_TIMERS``) a returning old primary is demoted to a replica in
    about 2 s rather than Sentinel's usual 10 s. ``fast_timers=False`` keeps every timer of
    Sentinel but those of the config file (down-after, failover-timeout).

    Each process gets SIGKILL if the thread that started it dies (Linux), so start the
    cluster from a thread that outlives it (pytest's fixtures run in the main thread).
    """

    def __init__(
        self,
        directory: Path,
        *,
        master_name: str = "outbox",
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 6000,
        quorum: int = 2,
        password: str | None = None,
        sentinel_password: str | None = None,
        fast_timers: bool = True,
    ) -> None:
        if replicas < 1 or sentinels < quorum or quorum < 1:
            raise ValueError("needs a replica, a quorum and at least that many sentinels")
        self.directory = directory
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = self._distinct_ports(1 + replicas + sentinels)
        self.primary = RedisNode(
            directory / "node-0", ports[0], password=password, primary_port=None
        )
        self.replicas = [
            RedisNode(directory / f"node-{i}", ports[i], password=password, primary_port=ports[0])
            for i in range(1, 1 + replicas)
        ]
        self.sentinels = [
            SentinelNode(
                directory / f"sentinel-{i}",
                port,
                master_name=master_name,
                primary_port=ports[0],
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                password=password,
                sentinel_password=sentinel_password,
                fast_timers=fast_timers,
            )
            for i, port in enumerate(ports[1 + replicas :])
        ]

    @property
    def fast_timers(self) -> bool:
        """Whether every sentinel runs with ``FAST_TIMERS`` (False before Redis 7.0)."""
        return all(sentinel.fast_timers_applied for sentinel in self.sentinels)

    @staticmethod
    def _distinct_ports(count: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port()
            if port not in ports:
                ports.append(port)
        return ports

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, *, timeout: float = 30) -> None:
        """Start the data nodes, wait for every replica's link, start the sentinels and wait
        until they see the whole deployment. Everything is killed again if it fails."""
        try:
            self.primary.start()
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                self.wait_for_replica(replica, timeout=timeout, primary=self.primary)
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_for_sentinels(timeout=timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every process (continuing stopped ones first) and wait for each to exit."""
        failures: list[BaseException] = []
        for process in [*self.sentinels, *self.nodes]:
            try:
                process.close()
            except BaseException as error:  # the others are killed all the same
                failures.append(error)
        if failures:
            raise failures[0]

    # -- addresses ---------------------------------------------------------------------------

    @property
    def nodes(self) -> list[RedisNode]:
        """The data nodes in start order: the first primary, then the replicas (their roles
        change with failovers; :meth:`current_primary` says who is primary now)."""
        return [self.primary, *self.replicas]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [sentinel.address for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://[:PASSWORD@]HOST:PORT,HOST:PORT,.../MASTER_NAME/0``."""
        credentials = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{credentials}{hosts}/{quote(self.master_name, safe='')}/0"

    def sentinel(self, **options: Any) -> redis.sentinel.Sentinel:
        """A redis-py ``Sentinel`` for this deployment (with its passwords); ``options`` go to
        the clients of the data nodes (``master_for``/``slave_for``)."""
        settings: dict[str, Any] = {
            "socket_timeout": PROBE_TIMEOUT_SECONDS,
            "socket_connect_timeout": PROBE_TIMEOUT_SECONDS,
        }
        sentinel_kwargs = dict(settings, password=self.sentinel_password)
        return redis.sentinel.Sentinel(
            self.sentinel_addresses,
            sentinel_kwargs=sentinel_kwargs,
            **(settings | {"password": self.password} | options),
        )

    def node_at(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no data node of this cluster listens on port {port}")

    # -- what the sentinels say --------------------------------------------------------------

    def _answering_sentinels(self) -> list[SentinelNode]:
        return [
            sentinel for sentinel in self.sentinels if sentinel.running and not sentinel.stopped
        ]

    def master_addresses(self) -> dict[int, tuple[str, int] | None]:
        """What each running, not stopped sentinel names as the master (by sentinel port;
        None for one that does not answer or knows none)."""
        named: dict[int, tuple[str, int] | None] = {}
        for sentinel in self._answering_sentinels():
            try:
                reply = sentinel.sentinel("GET-MASTER-ADDR-BY-NAME", self.master_name)
            except redis.RedisError:
                reply = None
            named[sentinel.port] = (str(reply[0]), int(reply[1])) if reply else None
        return named

    def master_address(self) -> tuple[str, int]:
        """The master as the first sentinel that answers names it."""
        errors: list[str] = []
        for sentinel in self.sentinels:
            try:
                reply = sentinel.sentinel("GET-MASTER-ADDR-BY-NAME", self.master_name)
            except redis.RedisError as error:
                errors.append(f"{sentinel.port}: {error!r}")
                continue
            if reply:
                return (str(reply[0]), int(reply[1]))
            errors.append(f"{sentinel.port}: knows no master {self.master_name!r}")
        raise LookupError(f"no sentinel named the master: {'; '.join(errors)}")

    def current_primary(self) -> RedisNode:
        """The data node the sentinels name as master."""
        return self.node_at(self.master_address()[1])

    def connected_replicas(self) -> list[int]:
        """Ports of the replicas the current primary streams to (``state=online``)."""
        return _online_replicas(self.current_primary())

    # -- waits -------------------------------------------------------------------------------

    def _hint(self) -> str:
        return f"logs: {self.directory}/*/*.log"

    def wait_for_sentinels(self, *, timeout: float = 30) -> None:
        """Until every running sentinel knows the master, every replica that is up, every
        other sentinel, and finds a quorum (``SENTINEL CKQUORUM``): a failover can happen."""
        others = len(self.sentinels) - 1
        # Every data node that answers, but the master (whichever node it is now).
        expected = sum(node.running and not node.stopped for node in self.nodes) - 1

        def ready(sentinel: SentinelNode) -> Callable[[], None]:
            def check() -> None:
                master = _pairs(sentinel.sentinel("MASTER", self.master_name))
                replicas = [_pairs(r) for r in sentinel.sentinel("REPLICAS", self.master_name)]
                peers = sentinel.sentinel("SENTINELS", self.master_name)
                healthy = [r for r in replicas if r.get("flags") == "slave"]
                if (
                    master.get("flags") != "master"
                    or len(healthy) < expected
                    or len(peers) < others
                ):
                    raise _NotYetError(
                        f"master flags {master.get('flags')}, replicas "
                        f"{[(r.get('port'), r.get('flags')) for r in replicas]}, "
                        f"{len(peers)} other sentinels"
                    )
                sentinel.sentinel("CKQUORUM", self.master_name)  # an error until it has one

            return check

        for sentinel in self._answering_sentinels():
            _wait_for(
                f"sentinel {sentinel.port} to know master {self.master_name!r}, "
                f"{expected} replicas and {others} other sentinels",
                ready(sentinel),
                timeout,
                hint=self._hint(),
            )

    def wait_for_promotion(self, old_port: int, timeout: float = 60) -> float:
        """Seconds until every answering sentinel names the same master, not ``old_port``,
        and that node answers ``ROLE`` as master."""
        start = time.monotonic()

        def promoted() -> None:
            named = self.master_addresses()
            addresses = set(named.values())
            if len(addresses) != 1 or None in addresses or (HOST, old_port) in addresses:
                raise _NotYetError(f"the sentinels name {named}")
            (address,) = addresses
            assert address is not None
            role = self.node_at(address[1]).role()
            if role != "master":
                raise _NotYetError(f"the sentinels name port {address[1]}, whose ROLE is {role}")

        _wait_for(
            f"the sentinels to promote a replica in place of port {old_port}",
            promoted,
            timeout,
            hint=self._hint(),
        )
        return time.monotonic() - start

    def wait_for_replica(
        self, node: RedisNode, timeout: float = 60, *, primary: RedisNode | None = None
    ) -> float:
        """Seconds until ``node`` replicates from ``primary`` (default: the master the
        sentinels name) with its link up and that primary counts it online: how long an
        old primary takes to rejoin."""
        start = time.monotonic()

        def replicating() -> None:
            target = primary if primary is not None else self.current_primary()
            info = node.replication()
            if not (
                target is not node
                and info.get("role") == "slave"
                and int(info.get("master_port", 0)) == target.port
                and info.get("master_link_status") == "up"
            ):
                raise _NotYetError(
                    f"the master is port {target.port}; node {node.port} has role "
                    f"{info.get('role')}, master port {info.get('master_port')}, link "
                    f"{info.get('master_link_status')}"
                )
            if node.port not in _online_replicas(target):
                raise _NotYetError(f"port {target.port} does not list {node.port} online yet")

        _wait_for(
            f"node {node.port} to replicate from "
            f"{primary.port if primary else 'the master the sentinels name'} with its link up",
            replicating,
            timeout,
            hint=self._hint(),
        )
        return time.monotonic() - start

    # -- all sentinels unreachable -----------------------------------------------------------

    def stop_sentinels(self) -> None:
        """SIGSTOP every sentinel: their ports accept connections but nothing answers.
        Sentinels continued after more than 2 s enter TILT mode (no failover for 30 s)."""
        for sentinel in self.sentinels:
            if not sentinel.stopped:
                sentinel.stop()

    def cont_sentinels(self) -> None:
        """SIGCONT every stopped sentinel."""
        for sentinel in self.sentinels:
            if sentinel.stopped:
                sentinel.cont()

    def terminate_sentinels(self) -> None:
        """SIGTERM every sentinel: their ports refuse connections."""
        for sentinel in self.sentinels:
            sentinel.terminate()

    def start_sentinels(self, *, timeout: float = 30) -> None:
        """Start the sentinels that are down again, on their ports with the config files they
        rewrote, and wait until they see the deployment again."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                sentinel.start()
        self.wait_for_sentinels(timeout=timeout)
