"""The benchmark's scenarios, in the order they run; each returns its figures."""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

from pydantic import SecretStr

from bench.api_scenario import scenario_api
from bench.env import (
    WORKER_PROCESSES,
    BenchEnv,
    Figures,
    outbox_workers,
    process_cpu_seconds,
    running,
    running_outbox_workers,
    running_sink,
    wait_until,
    worker_rss_mb,
)
from bench.latency_proxy import running_latency_proxy
from bench.limit import measure_limit
from bench.messages import BODY, message, message_fields
from bench.provider_limits import measure_provider_limits
from bench.sink import PASSWORD, USERNAME
from bench.worker_cpu import scenario_worker_cpu
from config.mail_settings import OAuthSettings
from peers.graph_standin import GraphStandIn
from tasks.message_input import MessageInput
from tasks.producer import CHUNK_SIZE
from worker.records import record_key

__all__ = ["SCENARIOS", "Scenario"]

Scenario = Callable[[BenchEnv], Figures]

SLOW_DATA_SECONDS = 0.05  # the slow server's wait before each DATA reply


def celery_baseline(
    env: BenchEnv, app: str, app_env: dict[str, str], count: int, enqueue: Callable[[], None]
) -> float:
    """A baseline's own Celery worker (one process per core, as ``outbox worker``), then
    ``enqueue``: messages per second until the sink accepted ``count`` more."""
    command = [
        sys.executable,
        *("-m", "celery", "--app", app, "worker"),
        *("--concurrency", str(WORKER_PROCESSES), "--loglevel", "WARNING"),
    ]
    with running(command, app_env):
        time.sleep(3)  # let the worker connect; its start-up is not what is measured
        before = env.sink.accepted
        started = time.perf_counter()
        enqueue()
        wait_until(lambda: env.sink.accepted - before >= count, 900, f"{app} deliveries")
        return count / (time.perf_counter() - started)


def scenario_naive(env: BenchEnv) -> Figures:
    """A Celery task and a new connection per e-mail."""
    count = env.options.naive_n
    env.log(f"naive: a Celery task and a new connection per e-mail, {count}")
    app_env = {
        "NAIVE_BROKER_URL": env.redis_url.removesuffix("/0") + "/2",
        "NAIVE_CA_FILE": str(env.ca_file),
        "NAIVE_SMTP_PORT": str(env.sink.port),
        "NAIVE_USERNAME": USERNAME,
        "NAIVE_PASSWORD": PASSWORD,
    }
    os.environ.update(app_env)  # read by bench.naive_app when imported, here as in its worker
    from bench.naive_app import send

    def enqueue() -> None:
        for n in range(count):
            send.delay({"from": "robot@example.com", **message_fields(n)})

    return {"naive_per_s": celery_baseline(env, "bench.naive_app", app_env, count, enqueue)}


def scenario_peer(env: BenchEnv) -> Figures:
    """django-celery-email-reboot at its defaults, its worker started as naive's is; skipped
    (``peer_per_s`` None, ``peer_skipped`` saying why) when its packages are not installed."""
    count = env.options.peer_n
    env.log(f"peer: django-celery-email-reboot at its defaults, {count}")
    try:
        import django  # noqa: F401
        import djcelery_email  # noqa: F401
    except ImportError:
        skipped = "django-celery-email-reboot is not installed: pip install -e '.[bench]'"
        env.log(f"peer: skipped, {skipped}")
        return {"peer_skipped": skipped, "peer_per_s": None}
    app_env = {
        "PEER_BROKER_URL": env.redis_url.removesuffix("/0") + "/3",
        "PEER_SMTP_PORT": str(env.sink.port),
        "PEER_USERNAME": USERNAME,
        "PEER_PASSWORD": PASSWORD,
        # Django's SMTP backend verifies with the default CAs: the test CA among them.
        "SSL_CERT_FILE": str(env.ca_file),
    }
    os.environ.update(app_env)  # read by bench.peer_app when imported, here as in its worker
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

    return {"peer_per_s": celery_baseline(env, "bench.peer_app", app_env, count, enqueue)}


def scenario_throughput(env: BenchEnv) -> Figures:
    """The limit (raw aiosmtplib) and outbox, alternating round by round so a noisy moment
    of the machine hits both alike; the medians."""
    options = env.options
    limits, outboxes = [], []
    for round_number in range(1, options.rounds + 1):
        env.log(
            f"round {round_number}: limit (raw aiosmtplib, {env.connections} "
            f"connections) and outbox (producer API, default worker), {options.n}"
        )
        limits.append(measure_limit(env.sink, env.client_tls, options.n, env.connections))
        outboxes.append(env.run_outbox(options.n))
    return {
        "limit_per_s": statistics.median(limits),
        "outbox_per_s": statistics.median(outboxes),
        "rounds": {"limit_per_s": limits, "outbox_per_s": outboxes},
    }


def scenario_latency(env: BenchEnv) -> Figures:
    """Enqueue to ``sent``, one message after another: p50 and p99 in ms."""
    count = env.options.latency_n
    env.log(f"latency: {count} single messages one after another")
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        key = record_key(env.producer.enqueue(message(n)).id)
        # Polled every 0.5 ms: the measurement's resolution.
        wait_until(_is_sent(env, key), 30, "a send", poll_seconds=0.0005)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1],
    }


def _is_sent(env: BenchEnv, key: str) -> Callable[[], bool]:
    return lambda: env.redis.hget(key, "status") == b"sent"


def scenario_slow_server(env: BenchEnv) -> Figures:
    """A server that waits before each DATA reply: outbox against the bound its connections
    allow, and what raw aiosmtplib gets from the same server (the reachable share)."""
    count = env.options.slow_n
    with running_sink(env.certificate, data_delay_seconds=SLOW_DATA_SECONDS) as slow:
        env.configure_smtp(slow)
        env.log(f"slow server: 50 ms before each DATA reply, {count} messages")
        env.run_outbox(2 * env.connections)  # warm-up: open the connections
        per_s = env.run_outbox(count)
        return {
            "slow_server_per_s": per_s,
            "slow_server_bound_per_s": env.connections / SLOW_DATA_SECONDS,
            "slow_server_limit_per_s": measure_limit(slow, env.client_tls, count, env.connections),
        }


def scenario_graph(env: BenchEnv) -> Figures:
    """Microsoft Graph (the stand-in): 100 ms per sendMail, 429 above 4 in flight."""
    count = env.options.graph_n
    env.log(f"graph: 100 ms per sendMail, 429 above 4 in flight, {count}")
    with GraphStandIn(env.certificate) as graph:
        graph.send_mail_delay_seconds = 0.1
        graph.mailbox_concurrency_limit = 4
        env.context.settings_store.save(
            OAuthSettings(
                from_mailbox="robot@contoso.com",
                instance=graph.base_url,
                api_url=graph.base_url,
                tenant=graph.tenant,
                client_id=graph.client_id,
                client_secret=SecretStr("app-secret-value"),
            )
        )
        per_s = env.run_outbox(count)
        return {
            "graph_per_s": per_s,
            "graph_bound_per_s": 4 / 0.1,
            "graph_token_requests": graph.token_requests,
            "graph_throttled": graph.throttled,
        }


def on_one_worker(*scenarios: Scenario) -> Scenario:
    """``scenarios`` one after another on one ``outbox worker`` (default configuration),
    started and warmed up once; then the peak resident memory of its processes."""

    def scenario(env: BenchEnv) -> Figures:
        env.configure_smtp(env.sink)
        with outbox_workers(env, [None]) as (worker,):
            wait_until(env.workers_ready, 60, "the outbox worker")
            env.run_outbox(50)  # warm-up: connections and tokens, as in steady state
            figures: Figures = {}
            for inner in scenarios:
                figures.update(inner(env))
            figures["worker_rss_mb"] = worker_rss_mb(worker.pid, "VmHWM")
            return figures

    return scenario


def scenario_instances(env: BenchEnv) -> Figures:
    """The slow server through one ``outbox worker``, then two, then four separate ones
    (distinct node names, one Redis; each run adds instances to those already running),
    ``--slow-n`` e-mails per instance so that every pool process has as many tasks in each
    run. The sink runs one process per core and serves every session at once (four
    instances: 32), so it is not what limits four."""
    count = env.options.slow_n
    with (
        running_sink(
            env.certificate, data_delay_seconds=SLOW_DATA_SECONDS, processes=WORKER_PROCESSES
        ) as slow,
        running_outbox_workers(env) as workers,
    ):
        env.log(f"slow server: one worker instance, then two, then four, {count} per instance")
        env.configure_smtp(slow)
        rates: dict[str, float] = {}
        for name, instances in (("one", 1), ("two", 2), ("four", 4)):
            workers.start([f"bench{i}@%h" for i in range(len(workers.services), instances)])
            ready = functools.partial(env.workers_ready, instances)
            wait_until(ready, 60, "the outbox workers")
            # Warm-up: a task for each pool process, which opens its connections.
            env.run_outbox(CHUNK_SIZE * WORKER_PROCESSES * instances)
            rates[name] = env.run_outbox(count * instances)
    return {
        "instances_per_s": rates,
        "two_instances_per_s": {"one": rates["one"], "two": rates["two"]},
        "two_instances_vs_one": rates["two"] / rates["one"],
        "four_instances_vs_one": rates["four"] / rates["one"],
        "four_instances_bound_per_s": 4 * env.connections / SLOW_DATA_SECONDS,
    }


def scenario_wan(env: BenchEnv) -> Figures:
    """The sink across an emulated WAN link (``--wan-rtt-ms`` of round trip, the latency
    proxy): outbox's default worker, then raw aiosmtplib on as many connections, the same
    e-mails; both timed with their connections open. A round trip for MAIL, RCPT and DATA
    pipelined and one for the message is the least an e-mail can cost a connection: the
    bound is connections / (2 RTT). Raw aiosmtplib does not pipeline (4 round trips).
    Alongside: the CPU the proxy and the sink used per e-mail, and how late the proxy wrote
    its chunks on average (its own error)."""
    count = env.options.wan_n
    rtt = env.options.wan_rtt_ms / 1000
    connections = env.connections
    env.log(f"wan: {env.options.wan_rtt_ms:g} ms round trip, {connections} connections, {count}")
    cpu: dict[str, float] = {}
    late: dict[str, float] = {}
    with running_latency_proxy(env.sink.port, rtt) as proxy:

        def measured(name: str, run: Callable[[], float]) -> float:
            pids = [proxy.pid, *env.sink.pids]
            proxy_cpu, sink_cpu = process_cpu_seconds(pids[:1]), process_cpu_seconds(pids[1:])
            chunks, late_seconds = proxy.lateness()
            per_s = run()
            cpu[f"proxy_{name}"] = (process_cpu_seconds(pids[:1]) - proxy_cpu) / count * 1e6
            cpu[f"sink_{name}"] = (process_cpu_seconds(pids[1:]) - sink_cpu) / count * 1e6
            chunks_after, late_after = proxy.lateness()
            late[name] = (late_after - late_seconds) / max(chunks_after - chunks, 1) * 1000
            return per_s

        env.configure_smtp(env.sink, proxy.port)
        with outbox_workers(env, [None]):
            wait_until(env.workers_ready, 60, "the outbox worker")
            # Warm-up: a task for each pool process, which opens its connections.
            env.run_outbox(CHUNK_SIZE * WORKER_PROCESSES)
            outbox = measured("outbox", lambda: env.run_outbox(count))
        raw = measured(
            "raw",
            lambda: measure_limit(
                env.sink, env.client_tls, count, connections, port=proxy.port, connected=True
            ),
        )
    bound = connections / (2 * rtt)
    return {
        "wan_outbox_per_s": outbox,
        "wan_raw_per_s": raw,
        "wan_bound_per_s": bound,
        "wan_vs_bound": outbox / bound,
        "wan_vs_raw": outbox / raw,
        "wan_cpu_us_per_message": cpu,
        "wan_proxy_late_ms": late,
    }


def scenario_provider_limits(env: BenchEnv) -> Figures:
    """Against the Exchange Online stand-in's quota: about 5 minutes (two backlogs of 3
    minutes' quota each, sent in two windows)."""
    if env.options.skip_provider_limits:
        return {"provider_limits_skipped": "run without --skip-provider-limits"}
    return measure_provider_limits(env)


def scenario_enqueue_and_memory(env: BenchEnv) -> Figures:
    """Bulk enqueue with no worker running: e-mails per second, and Redis bytes per queued
    e-mail beyond its body."""
    count = env.options.enqueue_n
    env.log(f"enqueue: {count} messages with no worker running")
    env.redis.flushdb()
    fields = [message_fields(n) for n in range(count)]
    used_before = int(env.redis.info("memory")["used_memory"])
    started = time.perf_counter()
    for start in range(0, count, 1000):
        batch = [MessageInput.model_validate(f) for f in fields[start : start + 1000]]
        env.producer.enqueue_many(batch)
    elapsed = time.perf_counter() - started
    used_after = int(env.redis.info("memory")["used_memory"])
    return {
        "enqueue_per_s": count / elapsed,
        "redis_bytes_per_message": (used_after - used_before) / count - len(BODY.encode()),
    }


def backlog(env: BenchEnv, count: int) -> tuple[float, float, dict[str, float]]:
    """``count`` e-mails queued before any worker runs, then one ``outbox worker``: its
    rate between 5 % and 95 % sent (start-up and the tail left out alike for any count),
    Redis bytes per queued e-mail beyond its body, and each worker process's resident
    memory once all are sent."""
    env.redis.flushdb()
    env.configure_smtp(env.sink)
    used_before = int(env.redis.info("memory")["used_memory"])
    for start in range(0, count, 1000):
        env.producer.enqueue_many([message(n) for n in range(start, min(start + 1000, count))])
    used = int(env.redis.info("memory")["used_memory"]) - used_before
    with outbox_workers(env, [None]) as (worker,):
        low, high = count // 20, count - count // 20
        timeout = 120 + count / 20

        def sent(at_least: int, what: str) -> None:
            wait_until(lambda: env.sent_count() >= at_least, timeout, what, poll_seconds=0.05)

        sent(low, "5 % sent")
        started = time.perf_counter()
        sent(high, "95 % sent")
        rate = (high - low) / (time.perf_counter() - started)
        sent(count, "all sent")
        rss = worker_rss_mb(worker.pid, "VmRSS")
    return rate, used / count - len(BODY.encode()), rss


def scenario_scale(env: BenchEnv) -> Figures:
    """With ``--scale``: a backlog of 100,000 against one of 2,000 (the same procedure)."""
    if not env.options.scale:
        keys = ("throughput_100k_vs_2k", "redis_bytes_per_message_100k", "worker_rss_mb_after_100k")
        skipped: Figures = dict.fromkeys(keys)
        skipped["scale_skipped"] = "run with --scale (about 2 minutes more)"
        return skipped
    env.log("backlog: 2,000 queued before the worker starts")
    small_per_s, _, small_rss = backlog(env, 2_000)
    env.log("backlog: 100,000 queued before the worker starts")
    large_per_s, large_bytes, large_rss = backlog(env, 100_000)
    return {
        "backlog_per_s": {"2k": small_per_s, "100k": large_per_s},
        "throughput_100k_vs_2k": large_per_s / small_per_s,
        "redis_bytes_per_message_100k": large_bytes,
        "worker_rss_mb_after_2k": small_rss,
        "worker_rss_mb_after_100k": large_rss,
    }


SCENARIOS: list[Scenario] = [
    scenario_naive,
    scenario_peer,
    on_one_worker(scenario_throughput, scenario_latency, scenario_slow_server, scenario_graph),
    scenario_instances,
    scenario_wan,
    scenario_worker_cpu,
    scenario_provider_limits,
    scenario_enqueue_and_memory,
    scenario_scale,
    # Last: it leaves tens of thousands of e-mails queued, which no worker must send before
    # the other scenarios are measured.
    scenario_api,
]
