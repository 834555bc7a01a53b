"""Run every benchmark in one go and print the figures (``python -m bench [--json]``)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import trustme
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bench.limit import measure_limit
from bench.messages import BODY, message, message_fields
from bench.provider_limits import measure_provider_limits
from bench.sink import PASSWORD, USERNAME, Sink
from config.mail_settings import OAuthSettings, SmtpSettings, TlsMode
from peers.graph_standin import GraphStandIn
from peers.processes import Service, child_pids
from peers.redis_server import RedisServer
from tasks.celery_app import celery_publisher, create_celery_app
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from worker.records import DeliveryStatus, record_key, status_index_key

WORKER_PROCESSES = os.cpu_count() or 1  # `outbox worker` runs Celery's default: one per core


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll_seconds: float = 0.01
) -> None:
    """Poll ``condition``; sparingly, since the poller shares the CPUs with what it measures."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_seconds)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.ca = trustme.CA()
        self.certificate = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_tls = ssl.create_default_context()
        self.ca.configure_trust(self.client_tls)
        self.redis_server = RedisServer(workdir)
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.env = {
            "OUTBOX_REDIS_URL": self.redis_server.url,
            "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
            "OUTBOX_DATA_DIR": str(workdir / "data"),
            "OUTBOX_CA_BUNDLE": str(self.ca_file),
        }
        os.environ.update(self.env)
        self.context = OutboxContext.from_environment()
        self.producer = Producer(
            self.context.deliveries,
            celery_publisher(create_celery_app(self.context)),
            message_id_domain="bench.outbox",
            max_message_bytes=self.context.settings.max_message_bytes,
        )
        self.connections = WORKER_PROCESSES * self.context.settings.smtp_max_connections
        self.results: dict[str, Any] = {}

    def log(self, text: str) -> None:
        if not self.args.json:
            print(text, file=sys.stderr, flush=True)

    def configure_smtp(self, sink: Sink) -> None:
        self.context.settings_store.save(
            SmtpSettings(
                server="127.0.0.1",
                port=sink.port,
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

    def measure_naive(self, sink: Sink, count: int) -> float:
        broker = self.redis_server.url.removesuffix("/0") + "/2"
        env = {
            "NAIVE_BROKER_URL": broker,
            "NAIVE_CA_FILE": str(self.ca_file),
            "NAIVE_SMTP_PORT": str(sink.port),
            "NAIVE_USERNAME": USERNAME,
            "NAIVE_PASSWORD": PASSWORD,
        }
        os.environ.update(env)
        from bench.naive_app import send

        def enqueue() -> None:
            for n in range(count):
                send.delay({"from": "robot@example.com", **message_fields(n)})

        return self._measure_celery_baseline("bench.naive_app", env, sink, count, enqueue)

    def measure_peer(self, sink: Sink, count: int) -> float | None:
        """django-celery-email-reboot at its defaults, its worker started as naive's is;
        None (and a line saying why) when its packages are not installed."""
        try:
            import django  # noqa: F401
            import djcelery_email  # noqa: F401
        except ImportError:
            self.results["peer_skipped"] = (
                "django-celery-email-reboot is not installed: pip install -e '.[bench]'"
            )
            self.log(f"peer: skipped, {self.results['peer_skipped']}")
            return None
        env = {
            "PEER_BROKER_URL": self.redis_server.url.removesuffix("/0") + "/3",
            "PEER_SMTP_PORT": str(sink.port),
            "PEER_USERNAME": USERNAME,
            "PEER_PASSWORD": PASSWORD,
            # Django's SMTP backend verifies with the default CAs: the test CA among them.
            "SSL_CERT_FILE": str(self.ca_file),
        }
        os.environ.update(env)
        from django.core.mail import EmailMessage, get_connection

        import bench.peer_app  # noqa: F401 - configures Django and the peer's Celery app

        def enqueue() -> None:
            # The fields of bench.messages.message_fields, as Django messages.
            get_connection().send_messages(
                [
                    EmailMessage(
                        f"Run results {n}", BODY, "robot@example.com", [f"user{n}@example.com"]
                    )
                    for n in range(count)
                ]
            )

        return self._measure_celery_baseline("bench.peer_app", env, sink, count, enqueue)

    def _measure_celery_baseline(
        self, app: str, env: dict[str, str], sink: Sink, count: int, enqueue: Callable[[], None]
    ) -> float:
        """A baseline's own Celery worker (one process per core, as ``outbox worker``), then
        ``enqueue``: messages per second until the sink accepted ``count`` more."""
        worker = Service(
            [
                sys.executable,
                *("-m", "celery", "--app", app, "worker"),
                *("--concurrency", str(WORKER_PROCESSES), "--loglevel", "WARNING"),
            ],
            env,
        )
        try:
            time.sleep(3)  # let the worker connect; its start-up is not what is measured
            before = sink.accepted
            started = time.perf_counter()
            enqueue()
            wait_until(lambda: sink.accepted - before >= count, 900, f"{app} deliveries")
            return count / (time.perf_counter() - started)
        finally:
            worker.stop()

    def measure_latency(self, count: int) -> tuple[float, float]:
        latencies = []
        for n in range(count):
            started = time.perf_counter()
            delivery_id = self.producer.enqueue(message(n)).id
            key = record_key(delivery_id)
            wait_until(
                lambda key=key: self.redis.hget(key, "status") == b"sent",
                30,
                "a send",
                poll_seconds=0.0005,  # the measurement's resolution
            )
            latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]

    def measure_graph(self, count: int) -> dict[str, Any]:
        with GraphStandIn(self.certificate) as graph:
            graph.send_mail_delay_seconds = 0.1
            graph.mailbox_concurrency_limit = 4
            self.context.settings_store.save(
                OAuthSettings(
                    from_mailbox="robot@contoso.com",
                    instance=graph.base_url,
                    api_url=graph.base_url,
                    tenant=graph.tenant,
                    client_id=graph.client_id,
                    client_secret=SecretStr("app-secret-value"),
                )
            )
            per_s = self.run_outbox(count)
            return {
                "graph_per_s": per_s,
                "graph_bound_per_s": 4 / 0.1,
                "graph_token_requests": graph.token_requests,
                "graph_throttled": graph.throttled,
            }

    def measure_enqueue_and_memory(self, count: int) -> tuple[float, float]:
        self.redis.flushdb()
        fields = [message_fields(n) for n in range(count)]
        used_before = int(self.redis.info("memory")["used_memory"])
        started = time.perf_counter()
        for start in range(0, count, 1000):
            batch = [MessageInput.model_validate(f) for f in fields[start : start + 1000]]
            self.producer.enqueue_many(batch)
        elapsed = time.perf_counter() - started
        used_after = int(self.redis.info("memory")["used_memory"])
        body = len(BODY.encode())
        return count / elapsed, (used_after - used_before) / count - body

    def measure_backlog(self, sink: Sink, count: int) -> dict[str, Any]:
        """``count`` e-mails queued before any worker runs, then one ``outbox worker``: its
        rate between 5 % and 95 % sent (start-up and the tail left out alike for any count),
        Redis bytes per queued e-mail beyond its body, and each worker process's resident
        memory once all are sent."""
        self.redis.flushdb()
        self.configure_smtp(sink)
        used_before = int(self.redis.info("memory")["used_memory"])
        for start in range(0, count, 1000):
            self.producer.enqueue_many([message(n) for n in range(start, min(start + 1000, count))])
        used = int(self.redis.info("memory")["used_memory"]) - used_before
        worker = Service(["outbox", "worker", "--loglevel", "WARNING"], self.env)
        try:
            low, high = count // 20, count - count // 20
            timeout = 120 + count / 20
            wait_until(lambda: self.sent_count() >= low, timeout, "5 % sent", poll_seconds=0.05)
            started = time.perf_counter()
            wait_until(lambda: self.sent_count() >= high, timeout, "95 % sent", poll_seconds=0.05)
            rate = (high - low) / (time.perf_counter() - started)
            wait_until(lambda: self.sent_count() >= count, timeout, "all sent", poll_seconds=0.05)
            rss = worker_rss_mb(worker.pid, "VmRSS")
        finally:
            worker.stop()
        return {
            "per_s": rate,
            "redis_bytes_per_message": used / count - len(BODY.encode()),
            "worker_rss_mb": rss,
        }

    def measure_instances(self, sink: Sink, count: int, instances: int) -> float:
        """Messages per second through ``instances`` separate ``outbox worker`` commands
        (distinct node names, one Redis)."""
        self.configure_smtp(sink)
        workers = [
            Service(
                ["outbox", "worker", "--loglevel", "WARNING", "--hostname", f"bench{i}@%h"],
                self.env,
            )
            for i in range(instances)
        ]
        try:
            wait_until(lambda: self._workers_ready(instances), 60, "the outbox workers")
            self.run_outbox(2 * self.connections * instances)  # warm-up: open the connections
            return self.run_outbox(count)
        finally:
            for worker in workers:
                worker.stop()

    def run(self) -> dict[str, Any]:
        args = self.args
        sink = Sink(self.certificate)
        try:
            self.log(f"naive: a Celery task and a new connection per e-mail, {args.naive_n}")
            self.results["naive_per_s"] = self.measure_naive(sink, args.naive_n)
            self.log(f"peer: django-celery-email-reboot at its defaults, {args.peer_n}")
            self.results["peer_per_s"] = self.measure_peer(sink, args.peer_n)

            self.configure_smtp(sink)
            worker = Service(["outbox", "worker", "--loglevel", "WARNING"], self.env)
            try:
                wait_until(lambda: self._workers_ready(), 60, "the outbox worker")
                self.run_outbox(50)  # warm-up: connections and tokens, as in steady state
                # Alternate the two, so a noisy moment of the machine hits both alike.
                limits, outboxes = [], []
                for round_number in range(1, args.rounds + 1):
                    self.log(
                        f"round {round_number}: limit (raw aiosmtplib, {self.connections} "
                        f"connections) and outbox (producer API, default worker), {args.n}"
                    )
                    limits.append(measure_limit(sink, self.client_tls, args.n, self.connections))
                    outboxes.append(self.run_outbox(args.n))
                self.results["limit_per_s"] = statistics.median(limits)
                self.results["outbox_per_s"] = statistics.median(outboxes)
                self.results["rounds"] = {"limit_per_s": limits, "outbox_per_s": outboxes}
                self.log(f"latency: {args.latency_n} single messages one after another")
                p50, p99 = self.measure_latency(args.latency_n)
                self.results["latency_p50_ms"], self.results["latency_p99_ms"] = p50, p99

                slow = Sink(self.certificate, data_delay_seconds=0.05)
                try:
                    self.configure_smtp(slow)
                    self.log(f"slow server: 50 ms before each DATA reply, {args.slow_n} messages")
                    self.run_outbox(2 * self.connections)  # warm-up: open the connections
                    self.results["slow_server_per_s"] = self.run_outbox(args.slow_n)
                    self.results["slow_server_bound_per_s"] = self.connections / 0.05
                    # What raw aiosmtplib gets from the same server: the reachable share.
                    self.results["slow_server_limit_per_s"] = measure_limit(
                        slow, self.client_tls, args.slow_n, self.connections
                    )
                finally:
                    slow.stop()
                self.log(f"graph: 100 ms per sendMail, 429 above 4 in flight, {args.graph_n}")
                self.results.update(self.measure_graph(args.graph_n))
                self.results["worker_rss_mb"] = worker_peak_rss_mb(worker.pid)
            finally:
                worker.stop()
            slow = Sink(self.certificate, data_delay_seconds=0.05)
            try:
                self.log(f"slow server: one worker instance, then two, {args.slow_n} each")
                one = self.measure_instances(slow, args.slow_n, 1)
                two = self.measure_instances(slow, args.slow_n, 2)
                self.results["two_instances_per_s"] = {"one": one, "two": two}
                self.results["two_instances_vs_one"] = two / one
            finally:
                slow.stop()
            self.measure_provider_limits()
            self.log(f"enqueue: {args.enqueue_n} messages with no worker running")
            rate, overhead = self.measure_enqueue_and_memory(args.enqueue_n)
            self.results["enqueue_per_s"], self.results["redis_bytes_per_message"] = rate, overhead
            self.measure_scale(sink)
        finally:
            sink.stop()
            self.redis_server.stop()
        r = self.results
        r["outbox_vs_naive"] = r["outbox_per_s"] / r["naive_per_s"]
        r["vs_peer"] = r["outbox_per_s"] / r["peer_per_s"] if r["peer_per_s"] else None
        r["outbox_vs_limit"] = r["outbox_per_s"] / r["limit_per_s"]
        r["slow_server_vs_bound"] = r["slow_server_per_s"] / r["slow_server_bound_per_s"]
        r["slow_server_limit_vs_bound"] = (
            r["slow_server_limit_per_s"] / r["slow_server_bound_per_s"]
        )
        r["graph_vs_bound"] = r["graph_per_s"] / r["graph_bound_per_s"]
        r["worker_processes"] = WORKER_PROCESSES
        r["smtp_connections"] = self.connections
        r["messages"] = args.n
        r["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return r

    def measure_provider_limits(self) -> None:
        """Against the Exchange Online stand-in's quota: about 5 minutes (two backlogs of 3
        minutes' quota each, sent in two windows)."""
        if self.args.skip_provider_limits:
            self.results["provider_limits_skipped"] = "run without --skip-provider-limits"
            return
        self.results.update(
            measure_provider_limits(
                self.context,
                self.producer,
                self.redis,
                self.env,
                self.certificate,
                per_minute=self.args.provider_limit,
                workers_ready=self._workers_ready,
                log=self.log,
            )
        )

    def measure_scale(self, sink: Sink) -> None:
        """With ``--scale``: a backlog of 100,000 against one of 2,000 (the same procedure)."""
        keys = (
            "throughput_100k_vs_2k",
            "redis_bytes_per_message_100k",
            "worker_rss_mb_after_100k",
        )
        if not self.args.scale:
            self.results.update(dict.fromkeys(keys))
            self.results["scale_skipped"] = "run with --scale (about 2 minutes more)"
            return
        self.log("backlog: 2,000 queued before the worker starts")
        small = self.measure_backlog(sink, 2_000)
        self.log("backlog: 100,000 queued before the worker starts")
        large = self.measure_backlog(sink, 100_000)
        self.results["backlog_per_s"] = {"2k": small["per_s"], "100k": large["per_s"]}
        self.results["throughput_100k_vs_2k"] = large["per_s"] / small["per_s"]
        self.results["redis_bytes_per_message_100k"] = large["redis_bytes_per_message"]
        self.results["worker_rss_mb_after_2k"] = small["worker_rss_mb"]
        self.results["worker_rss_mb_after_100k"] = large["worker_rss_mb"]

    def _workers_ready(self, count: int = 1) -> bool:
        app = create_celery_app(self.context)
        replies = app.control.ping(timeout=0.5) or []
        return len(replies) >= count


def worker_peak_rss_mb(main_pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) of the worker's main process and each pool process."""
    return worker_rss_mb(main_pid, "VmHWM")


def worker_rss_mb(main_pid: int, field: str) -> dict[str, float]:
    """``field`` of /proc/PID/status (VmRSS: now; VmHWM: the peak), in MB, of the worker's
    main process and each pool process."""
    sizes = {}
    for pid in [main_pid, *child_pids(main_pid)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                sizes[str(pid)] = int(line.split()[1]) / 1024
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-n", type=int, default=2000, help="messages for limit and outbox")
    parser.add_argument("--naive-n", type=int, default=500, help="messages for naive")
    parser.add_argument(
        "--peer-n", type=int, default=1000, help="messages for django-celery-email-reboot"
    )
    parser.add_argument("--latency-n", type=int, default=200)
    parser.add_argument("--slow-n", type=int, default=1000)
    parser.add_argument("--graph-n", type=int, default=400)
    parser.add_argument("--enqueue-n", type=int, default=10_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating limit/outbox rounds (median kept)"
    )
    parser.add_argument(
        "--provider-limit", type=int, default=30, help="the stand-in's quota per minute"
    )
    parser.add_argument(
        "--skip-provider-limits",
        action="store_true",
        help="leave out the sending-limit runs against the Exchange Online stand-in (5 min)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also a backlog of 100,000 e-mails against one of 2,000 (about 2 minutes more)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as workdir:
        results = Bench(args, Path(workdir)).run()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, value in results.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        print(f"{name:26} {shown}")


if __name__ == "__main__":
    main()
