"""What every benchmark scenario shares (Redis, the sink, outbox's settings), and its setup."""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import trustme
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bench.messages import message
from bench.sink import PASSWORD, USERNAME, Sink
from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import Service, child_pids
from peers.redis_server import RedisServer
from tasks.celery_app import celery_publisher, create_celery_app
from tasks.context import OutboxContext
from tasks.producer import Producer
from worker.records import DeliveryStatus, status_index_key

__all__ = [
    "REPO",
    "WORKER_PROCESSES",
    "BenchEnv",
    "Figure",
    "Figures",
    "Options",
    "OutboxWorkers",
    "bench_env",
    "outbox_workers",
    "process_cpu_seconds",
    "running",
    "running_outbox_workers",
    "running_sink",
    "wait_until",
    "worker_rss_mb",
]

WORKER_PROCESSES = os.cpu_count() or 1  # `outbox worker` runs Celery's default: one per core
REPO = Path(__file__).resolve().parents[1]  # the checkout: the commit a run reports

# What a scenario reports: numbers, or per-process / per-round numbers, or why it was skipped.
Figure = float | str | None | dict[str, float] | dict[str, list[float]]
Figures = dict[str, Figure]


@dataclass(frozen=True, slots=True)
class Options:
    """The command line (``python -m bench --help``)."""

    json: bool
    n: int
    naive_n: int
    peer_n: int
    latency_n: int
    slow_n: int
    wan_n: int
    wan_rtt_ms: float
    cpu_n: int
    graph_n: int
    enqueue_n: int
    rounds: int
    provider_limit: int
    skip_provider_limits: bool
    scale: bool


@dataclass(frozen=True, slots=True)
class BenchEnv:
    """One Redis, one SMTP sink, one test CA and outbox's context, producer and process
    environment, set up once for every scenario."""

    options: Options
    certificate: trustme.LeafCert
    ca_file: Path
    client_tls: ssl.SSLContext
    redis_url: str
    redis: redis.Redis
    outbox_env: dict[str, str]  # what an `outbox worker` process is started with
    context: OutboxContext
    producer: Producer
    sink: Sink
    connections: int  # SMTP connections of one `outbox worker`, all processes together

    def log(self, text: str) -> None:
        if not self.options.json:
            print(text, file=sys.stderr, flush=True)

    def configure_smtp(self, sink: Sink, port: int | None = None) -> None:
        """outbox's SMTP settings: ``sink``, or ``port`` (a proxy in front of it)."""
        self.context.settings_store.save(
            SmtpSettings(
                server="127.0.0.1",
                port=sink.port if port is None else port,
                from_mailbox="robot@example.com",
                username=USERNAME,
                password=SecretStr(PASSWORD),
                tls=TlsMode.STARTTLS,
            )
        )

    def sent_count(self) -> int:
        return int(self.redis.zcard(status_index_key(DeliveryStatus.SENT)))

    def run_outbox(self, count: int) -> float:
        """Enqueue ``count`` through the producer API; messages per second until all are sent."""
        before = self.sent_count()
        started = time.perf_counter()
        self.producer.enqueue_many([message(n) for n in range(count)])
        wait_until(lambda: self.sent_count() - before >= count, 600, "outbox deliveries")
        return count / (time.perf_counter() - started)

    def workers_ready(self, count: int = 1) -> bool:
        app = create_celery_app(self.context)
        replies = app.control.ping(timeout=0.5) or []
        return len(replies) >= count


@contextmanager
def bench_env(options: Options) -> Iterator[BenchEnv]:
    """Everything set up in a temporary directory, and stopped (sink, then Redis) on the
    way out whatever happened."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outbox-bench-")))
        ca = trustme.CA()
        ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        redis_server = RedisServer(workdir)
        stack.callback(redis_server.stop)
        redis_server.start()
        outbox_env = {
            "OUTBOX_REDIS_URL": redis_server.url,
            "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
            "OUTBOX_DATA_DIR": str(workdir / "data"),
            "OUTBOX_CA_BUNDLE": str(ca_file),
        }
        os.environ.update(outbox_env)  # the context below reads them, as a process would
        context = OutboxContext.from_environment()
        producer = Producer(
            context.deliveries,
            celery_publisher(create_celery_app(context)),
            message_id_domain="bench.outbox",
            max_message_bytes=context.settings.max_message_bytes,
        )
        certificate = ca.issue_cert("127.0.0.1", "localhost")
        yield BenchEnv(
            options=options,
            certificate=certificate,
            ca_file=ca_file,
            client_tls=client_tls,
            redis_url=redis_server.url,
            redis=redis.Redis.from_url(redis_server.url),
            outbox_env=outbox_env,
            context=context,
            producer=producer,
            sink=stack.enter_context(running_sink(certificate)),
            connections=WORKER_PROCESSES * context.settings.smtp_max_connections,
        )


@contextmanager
def running_sink(
    certificate: trustme.LeafCert, data_delay_seconds: float = 0.0, processes: int = 1
) -> Iterator[Sink]:
    sink = Sink(certificate, data_delay_seconds=data_delay_seconds, processes=processes)
    try:
        yield sink
    finally:
        sink.stop()


@contextmanager
def running(command: list[str], env: dict[str, str]) -> Iterator[Service]:
    service = Service(command, env)
    try:
        yield service
    finally:
        service.stop()


class OutboxWorkers:
    """``outbox worker`` instances, started as asked; ``stop`` stops them all at once (each
    waits for its warm shutdown: a few seconds, which one after another would add up)."""

    def __init__(self, env: BenchEnv) -> None:
        self._env = env
        self.services: list[Service] = []

    def start(self, hostnames: list[str | None]) -> list[Service]:
        """One more instance per hostname (None: Celery's default node name)."""
        started = []
        for hostname in hostnames:
            named = [] if hostname is None else ["--hostname", hostname]
            command = ["outbox", "worker", "--loglevel", "WARNING", *named]
            started.append(Service(command, self._env.outbox_env))
            self.services.append(started[-1])
        return started

    def stop(self) -> None:
        services, self.services = self.services, []
        if services:
            with ThreadPoolExecutor(len(services)) as pool:
                list(pool.map(Service.stop, services))


@contextmanager
def running_outbox_workers(env: BenchEnv) -> Iterator[OutboxWorkers]:
    workers = OutboxWorkers(env)
    try:
        yield workers
    finally:
        workers.stop()


@contextmanager
def outbox_workers(env: BenchEnv, hostnames: list[str | None]) -> Iterator[list[Service]]:
    """One ``outbox worker`` per hostname (None: Celery's default node name), all stopped
    on the way out."""
    with running_outbox_workers(env) as workers:
        yield workers.start(hostnames)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll_seconds: float = 0.01
) -> None:
    """Poll ``condition``; sparingly, since the poller shares the CPUs with what it measures."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_seconds)


def process_cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes ``pids`` have used so far (/proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command's name
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def worker_rss_mb(main_pid: int, field: str) -> dict[str, float]:
    """``field`` of /proc/PID/status (VmRSS: now; VmHWM: the peak), in MB, of the worker's
    main process and each pool process."""
    sizes = {}
    for pid in [main_pid, *child_pids(main_pid)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                sizes[str(pid)] = int(line.split()[1]) / 1024
    return sizes
