"""What "acknowledged means replicated" costs: enqueues and worker jobs with
``OUTBOX_REDIS_MIN_REPLICAS=0`` and with replicas required, on two deployments, in one run
(``python -m bench.replication [--only sentinel|plain] [--json]``; about 80 s on two quiet
cores).

First Redis Sentinel, where ``OUTBOX_REDIS_MIN_REPLICAS`` defaults to 1, so what a user gets
(``peers.sentinel.SentinelCluster``: a primary, two replicas and three sentinels,
real ``redis-server`` processes on loopback, with Sentinel's own timers), reached through
``redis+sentinel://``. ``=0`` (no ``WAIT``, no check on the producer's side) is compared with
the default: per enqueue ``ReplicaWait.require`` (the primary's view of its replicas, and
``FailoverWatch.follow``: idle connections moved to the primary the sentinels name) and
``confirm`` (``WAIT``, then ``FailoverWatch.under_way``: ``SENTINEL MASTER`` to every
sentinel); per worker job
``AsyncReplicaWait.confirm`` (``WAIT``, then every sentinel asked). A worker on Sentinel also
asks every sentinel before each job (``AsyncFailoverWatch.wait_out``) whatever
``OUTBOX_REDIS_MIN_REPLICAS`` is, so its job at ``=0`` still has that check: the time in
``wait_out`` is shown for both cases, and what a job costs without it.

Then a primary and one replica through ``redis://``, ``=0`` against ``=1`` (``WAIT`` only,
no sentinels to ask).

Each case's context is what a process with ``OUTBOX_REDIS_URL`` (and, but for the default,
``OUTBOX_REDIS_MIN_REPLICAS``) set builds; its producer is ``tasks.celery_app.producer_for``
with the process's Celery app, as the API builds it; its worker side is the ``WorkerRuntime``
a worker process builds. The calls above are timed on those very objects (their methods
wrapped, which adds a microsecond or so).

Every data node keeps an append-only file synced every second, as docker-compose.yml runs
them (``SentinelCluster`` syncs on every write for its fault tests: the bench sets
``everysec`` on each node). Between timed runs (never inside one) everything but kombu's
bindings is deleted and every file is rewritten, so every run starts from the same small data
set and no automatic rewrite (a fork) lands in one run and not in another. The two cases
alternate in small steps (100 single enqueues, one batch, one job), and which one goes first
alternates too, so a noisy moment of the machine hits both alike.

Throughput and latency are end to end, so they carry the machine's noise. The time spent in
the calls themselves is what the acknowledgement adds, and is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import trustme
from celery import Celery
from cryptography.fernet import Fernet
from pydantic import SecretStr

from bench.messages import message
from bench.sink import PASSWORD, USERNAME, Sink
from config.mail_settings import SmtpSettings, TlsMode
from config.process import ProcessSettings
from config.redis_location import redis_server_binary
from peers.redis_server import free_port
from peers.sentinel import SentinelCluster, _die_with_parent
from tasks.celery_app import CeleryTaskQueue, create_celery_app, producer_for
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import CHUNK_SIZE, Producer
from worker.deliver import JobOutcome
from worker.records.replication import AsyncFailoverWatch, AsyncReplicaWait, in_sync_replicas
from worker.runtime import WorkerRuntime, fastest_event_loop

__all__ = ["measure_replication"]

CASES = ("without", "with")
BLOCK = 100  # single enqueues in a row of one case before the other case's turn
# docker-compose.yml's Sentinel timings; no failover is expected (the bench checks).
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 60_000


class _Calls:
    """How long each call of some methods of live objects took (ms), by name: the methods are
    wrapped on the objects themselves, so the code under test calls them as it always does."""

    def __init__(self) -> None:
        self.ms: defaultdict[str, list[float]] = defaultdict(list)
        self.results: defaultdict[str, list[Any]] = defaultdict(list)

    def time(self, target: object, method: str, name: str) -> None:
        original: Callable[..., Any] = getattr(target, method)
        spent, results = self.ms[name], self.results[name]

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                spent.append((time.perf_counter() - started) * 1000)
            results.append(result)
            return result

        setattr(target, method, timed)

    def time_async(self, target: object, method: str, name: str) -> None:
        original: Callable[..., Any] = getattr(target, method)
        spent, results = self.ms[name], self.results[name]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await original(*args, **kwargs)
            finally:
                spent.append((time.perf_counter() - started) * 1000)
            results.append(result)
            return result

        setattr(target, method, timed)

    def clear(self) -> None:
        for values in (*self.ms.values(), *self.results.values()):
            values.clear()


def _rewrite_aof(client: redis.Redis) -> None:
    """BGREWRITEAOF, and wait until it is done."""

    def done() -> bool:
        info = client.info("persistence")
        return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

    _wait_until(done, 30, "an AOF rewrite already running")
    client.bgrewriteaof()
    _wait_until(done, 30, "the AOF rewrite")


class _Server:
    """One ``redis-server`` on a free loopback port, the way production runs it: append-only
    file synced every second, no RDB snapshots; a replica of ``primary_port`` if given."""

    def __init__(self, directory: Path, *, primary_port: int | None = None) -> None:
        directory.mkdir(parents=True)
        self.port = free_port()
        replica = ["--replicaof", "127.0.0.1", str(primary_port)] if primary_port else []
        self._process = subprocess.Popen(  # noqa: S603 - our own redis-server, fixed arguments
            [
                redis_server_binary(),
                *("--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
                *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
                *replica,
            ],
            stdout=subprocess.DEVNULL,
            # Killed with the bench, even by SIGKILL (Linux), as SentinelCluster's are.
            preexec_fn=_die_with_parent,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        try:
            _wait_until(self._answers, 10, f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.client.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class _Deployment:
    """Where Redis runs: its URL, a client of the primary and one of each replica (for the
    resets between runs), and the settings of the two cases."""

    name: str
    title: str
    labels: tuple[str, str]
    url: str
    primary: redis.Redis
    replicas: list[redis.Redis]
    # Per case (CASES' order), OUTBOX_REDIS_MIN_REPLICAS (None: unset, the default) and the
    # minimum it must mean.
    min_replicas: tuple[tuple[int | None, int], tuple[int | None, int]]

    def check(self) -> None:
        """After the run: raise if anything happened that would make its figures wrong."""


class _Plain(_Deployment):
    """A primary and one replica, ``redis://``: OUTBOX_REDIS_MIN_REPLICAS 0 against 1."""

    name = "plain"
    title = "redis:// (primary + 1 replica): OUTBOX_REDIS_MIN_REPLICAS=0 against =1"
    labels = ("=0 (no WAIT)", "=1 (WAIT)")
    min_replicas = ((0, 0), (1, 1))

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        primary = _Server(directory / "primary")
        stack.callback(primary.stop)
        replica = _Server(directory / "replica", primary_port=primary.port)
        stack.callback(replica.stop)
        self.url, self.primary, self.replicas = primary.url, primary.client, [replica.client]


class _Sentinel(_Deployment):
    """``SentinelCluster``: a primary, two replicas, three sentinels, ``redis+sentinel://``;
    OUTBOX_REDIS_MIN_REPLICAS 0 against unset (its default there, 1)."""

    name = "sentinel"
    title = (
        "redis+sentinel:// (primary + 2 replicas + 3 sentinels): "
        "OUTBOX_REDIS_MIN_REPLICAS=0 against the default (1)"
    )
    labels = ("=0", "default (1)")
    min_replicas = ((0, 0), (None, 1))

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.cluster = SentinelCluster(
            directory,
            replicas=2,
            sentinels=3,
            down_after_ms=DOWN_AFTER_MS,
            failover_timeout_ms=FAILOVER_TIMEOUT_MS,
            fast_timers=False,  # Sentinel's own INFO and hello periods, as a user runs it
        )
        stack.callback(self.cluster.close)  # kills whatever it started, even half started
        self.cluster.start()
        clients = [
            node.client(decode_responses=False, socket_timeout=60) for node in self.cluster.nodes
        ]
        for client in clients:
            stack.callback(client.close)
            client.config_set("appendfsync", "everysec")
        self.url, self.primary, self.replicas = self.cluster.url, clients[0], clients[1:]

    def check(self) -> None:
        named = self.cluster.master_addresses()
        if set(named.values()) != {self.cluster.primary.address}:
            raise RuntimeError(f"a failover happened during the run: the sentinels name {named}")


class _Run:
    """One deployment, the contexts, producers and Celery apps of its two cases, and the
    SMTP certificate of its jobs."""

    def __init__(self, deployment: _Deployment, workdir: Path, stack: ExitStack) -> None:
        self.deployment = deployment
        _wait_until(
            lambda: (
                in_sync_replicas(deployment.primary.info("replication")) >= len(deployment.replicas)
            ),
            30,
            "the replicas to sync",
        )
        ca = trustme.CA()
        ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self.certificate = ca.issue_cert("127.0.0.1", "localhost")
        fields = {
            "redis_url": deployment.url,
            "secret_key": Fernet.generate_key().decode(),
            "data_dir": str(workdir / "data"),
            "ca_bundle": str(ca_file),
        }
        # The contexts processes with OUTBOX_REDIS_URL, OUTBOX_SECRET_KEY, OUTBOX_DATA_DIR,
        # OUTBOX_CA_BUNDLE (and OUTBOX_REDIS_MIN_REPLICAS, unless None) set would build.
        self.contexts: dict[str, OutboxContext] = {}
        self.producers: dict[str, Producer] = {}
        self.apps: dict[str, Celery] = {}
        for case, (setting, meaning) in zip(CASES, deployment.min_replicas, strict=True):
            extra = {} if setting is None else {"redis_min_replicas": setting}
            context = OutboxContext.from_settings(
                ProcessSettings.model_validate({**fields, **extra})
            )
            stack.callback(context.redis.close)
            if context.settings.min_replicas != meaning:
                raise RuntimeError(f"{case}: min_replicas {context.settings.min_replicas}")
            app = create_celery_app(context)
            stack.callback(app.close)
            self.contexts[case], self.apps[case] = context, app
            self.producers[case] = producer_for(context, app)  # as api/services.py builds it
            failovers = context.replicas._failovers
            if failovers is not None:
                stack.callback(failovers.close)

    def reset(self) -> None:
        """Between timed runs: delete everything but kombu's bindings (without them a publish
        would find no queue and store nothing), rewrite every append-only file, and let the
        replicas catch up."""
        client, replicas = self.deployment.primary, self.deployment.replicas
        keys = [key for key in client.scan_iter(count=1000) if not key.startswith(b"_kombu.")]
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
        _rewrite_aof(client)
        if int(client.wait(len(replicas), 10_000)) < len(replicas):
            raise RuntimeError("the replicas did not catch up")
        for replica in replicas:
            _rewrite_aof(replica)

    def configure_smtp(self, sink: Sink) -> None:
        self.contexts["without"].settings_store.save(
            SmtpSettings(
                server="127.0.0.1",
                port=sink.port,
                from_mailbox="robot@example.com",
                username=USERNAME,
                password=SecretStr(PASSWORD),
                tls=TlsMode.STARTTLS,
            )
        )


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * share) - 1)]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p99": _percentile(values, 0.99),
        "calls": len(values),
    }


def _order(round_number: int) -> tuple[str, ...]:
    return CASES if round_number % 2 == 0 else CASES[::-1]


def _singles(producer: Producer, messages: Sequence[MessageInput]) -> list[float]:
    """One ``enqueue`` per message, as ``POST /api/emails`` does per request: each call's
    latency in ms."""
    latencies = []
    for item in messages:
        started = time.perf_counter()
        producer.enqueue(item)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _batch(producer: Producer, batch: Sequence[MessageInput]) -> float:
    """One ``enqueue_many``, as ``POST /api/emails/batch`` does: seconds."""
    started = time.perf_counter()
    producer.enqueue_many(batch)
    return time.perf_counter() - started


def _producer_calls(run: _Run) -> _Calls:
    """The timed calls of the producers: ``require`` and ``confirm`` of their
    ``ReplicaWait``, and, on Sentinel, ``follow`` and ``under_way`` of their
    ``FailoverWatch`` (inside them); those of the case without replicas are named
    ``without ...`` (``follow`` and ``under_way`` must never run there)."""
    calls = _Calls()
    for case, prefix in (("with", ""), ("without", "without ")):
        replicas = run.contexts[case].replicas
        calls.time(replicas, "require", f"{prefix}require")
        calls.time(replicas, "confirm", f"{prefix}confirm")
        failovers = replicas._failovers
        if failovers is not None:
            calls.time(failovers, "follow", f"{prefix}follow")
            calls.time(failovers, "under_way", f"{prefix}under_way")
    return calls


def _spent(calls: _Calls) -> dict[str, list[float]]:
    """Per enqueue, ms: ``require`` + ``confirm``, and the failover checks among them."""
    ms = calls.ms
    spent = {"total": [r + c for r, c in zip(ms["require"], ms["confirm"], strict=True)]}
    for name in ("follow", "under_way"):
        if ms[name]:
            spent[name] = list(ms[name])
        if ms[f"without {name}"]:
            raise RuntimeError(f"OUTBOX_REDIS_MIN_REPLICAS=0 called {name}()")
    return spent


def _single_round(
    run: _Run, calls: _Calls, singles: Sequence[MessageInput], round_number: int
) -> dict[str, list[float]]:
    """One round of single enqueues in blocks of ``BLOCK``, the cases alternating block by
    block: each case's latencies (ms)."""
    run.reset()
    calls.clear()
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for block_number, start in enumerate(range(0, len(singles), BLOCK)):
        for case in _order(round_number + block_number):
            times[case] += _singles(run.producers[case], singles[start : start + BLOCK])
    return times


def _batch_round(
    run: _Run, calls: _Calls, batch: Sequence[MessageInput], batches: int, round_number: int
) -> dict[str, float]:
    """One round of ``batches`` batches per case, alternating batch by batch: each case's
    seconds in all."""
    seconds: dict[str, float] = dict.fromkeys(CASES, 0.0)
    calls.clear()
    for slot in range(batches):
        run.reset()  # 11 MB per node and case per slot: no automatic AOF rewrite in one
        for case in _order(round_number + slot):
            seconds[case] += _batch(run.producers[case], batch)
    return seconds


def _keep_spent(spent: dict[str, list[float]], calls: _Calls) -> None:
    for key, values in _spent(calls).items():
        spent.setdefault(key, []).extend(values)


def _measure_producer(run: _Run, args: argparse.Namespace, log: Callable[[str], None]) -> Any:
    """Per round and case: e-mails per second of ``args.singles`` single enqueues (run in
    blocks of ``BLOCK``, the cases alternating block by block, so both see the same moments
    of the machine) and of ``args.batches`` batches of 1,000 (alternating batch by batch)."""
    calls = _producer_calls(run)
    singles = [message(n) for n in range(args.singles)]
    batch = [message(n) for n in range(1000)]
    for producer in run.producers.values():  # warm-up: connections, kombu's declarations, INFO
        _singles(producer, singles[:100])
        _batch(producer, batch)
    rates: dict[str, dict[str, list[float]]] = {
        kind: {case: [] for case in CASES} for kind in ("single", "batch")
    }
    latencies: dict[str, list[float]] = {case: [] for case in CASES}
    spent: dict[str, dict[str, list[float]]] = {"single": {}, "batch": {}}
    name = run.deployment.name
    for round_number in range(args.rounds):
        log(f"{name} round {round_number + 1}: {args.singles:,} single enqueues per case")
        times = _single_round(run, calls, singles, round_number)
        for case in CASES:
            rates["single"][case].append(len(singles) / (sum(times[case]) / 1000))
            latencies[case] += times[case]
        _keep_spent(spent["single"], calls)
        log(f"{name} round {round_number + 1}: {args.batches} x enqueue_many(1000) per case")
        seconds = _batch_round(run, calls, batch, args.batches, round_number)
        for case in CASES:
            rates["batch"][case].append(args.batches * len(batch) / seconds[case])
        _keep_spent(spent["batch"], calls)
    return rates, latencies, spent


def _runtime(run: _Run, case: str, calls: _Calls) -> WorkerRuntime:
    """``case``'s worker runtime, as tasks.celery_app's _ProcessRuntime builds it in a worker
    process, its ``confirm`` (and on Sentinel ``wait_out``) timed into ``calls``."""
    context = run.contexts[case]
    runtime = WorkerRuntime(
        context.settings,
        location=context.redis_location,
        box=context.secret_box,
        task_queue=CeleryTaskQueue(run.apps[case], context.redis),
    )
    calls.time_async(runtime._replicas, "confirm", "confirm")
    if runtime._failovers is not None:
        calls.time_async(runtime._failovers, "wait_out", "wait_out")
    return runtime


def _job(run: _Run, runtime: WorkerRuntime, calls: _Calls, first: int) -> float:
    """``CHUNK_SIZE`` new e-mails (numbered from ``first``) delivered as one job: ms."""
    ids = [
        created.id
        for created in run.producers["without"].enqueue_many(
            [message(n) for n in range(first, first + CHUNK_SIZE)]
        )
    ]
    started = time.perf_counter()
    outcomes = runtime.deliver(ids)
    elapsed = (time.perf_counter() - started) * 1000
    if outcomes != [JobOutcome.SENT] * len(ids):
        raise RuntimeError(f"a benchmark job did not send everything: {outcomes}")
    if calls.results["confirm"][-1] is not True:
        raise RuntimeError("the replicas did not acknowledge a job's outcomes")
    return elapsed


def _measure_jobs(
    run: _Run, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """A job of ``CHUNK_SIZE`` e-mails through each case's worker runtime (on Sentinel
    ``AsyncFailoverWatch.wait_out``; claim, send to the loopback SMTP sink over reused
    connections, record; ``AsyncReplicaWait.confirm``): ms per job, and ms in the timed
    calls per job and case."""
    run.reset()
    sink = Sink(run.certificate)
    runtimes: dict[str, WorkerRuntime] = {}
    try:
        run.configure_smtp(sink)
        calls = {case: _Calls() for case in CASES}
        for case in CASES:
            runtimes[case] = _runtime(run, case, calls[case])
        numbers = itertools.count(step=CHUNK_SIZE)
        for case in CASES:  # warm-up: SMTP connections, settings, scripts
            _job(run, runtimes[case], calls[case], next(numbers))
            calls[case].clear()
        log(f"{run.deployment.name} worker: {args.jobs} jobs of {CHUNK_SIZE} e-mails per case")
        durations: dict[str, list[float]] = {case: [] for case in CASES}
        for job_number in range(args.jobs):
            for case in _order(job_number):
                durations[case].append(_job(run, runtimes[case], calls[case], next(numbers)))
        spent = {case: {name: list(ms) for name, ms in calls[case].ms.items()} for case in CASES}
        return durations, spent
    finally:
        for runtime in runtimes.values():
            runtime.close()
        sink.stop()


async def _time_calls(call: Callable[[], Any], count: int) -> list[float]:
    """ms per call of the coroutine function ``call``, after a warm-up."""
    for _ in range(min(100, count)):
        await call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _measure_alone(run: _Run, count: int) -> dict[str, list[float]]:
    """The worker's calls one after another on a worker's clients (built as
    ``WorkerRuntime`` builds them, from the default case's settings), nothing else to
    replicate: ``AsyncReplicaWait.confirm``, on Sentinel ``AsyncFailoverWatch.under_way``
    and ``wait_out``; and one round trip (PING) on the same client, for scale."""
    settings, location = run.contexts["with"].settings, run.contexts["with"].redis_location
    client = location.async_client()
    target = location.sentinel
    failovers = (
        AsyncFailoverWatch(location.async_sentinel_clients(), target.master_name)
        if target is not None
        else None
    )
    try:
        waits = AsyncReplicaWait(
            client,
            min_replicas=settings.min_replicas,
            timeout_seconds=settings.redis_replica_timeout_seconds,
            failovers=failovers,
        )

        async def confirm() -> None:
            if not await waits.confirm():
                raise RuntimeError("the replicas did not acknowledge")

        times = {"confirm": await _time_calls(confirm, count)}
        if failovers is not None:
            times["under_way"] = await _time_calls(failovers.under_way, count)
            times["wait_out"] = await _time_calls(lambda: failovers.wait_out(client), count)
        times["ping"] = await _time_calls(client.ping, count)
        return times
    finally:
        await client.aclose()
        if failovers is not None:
            await failovers.aclose()


def _ratios(without: float, with_: float) -> dict[str, float]:
    return {"without": without, "with": with_, "ratio": with_ / without}


def _measure_deployment(
    name: str, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every figure of one deployment, with each round's and each case's raw numbers."""
    log(f"{name}: starting")
    with (
        tempfile.TemporaryDirectory(prefix=f"outbox-bench-{name}-") as workdir,
        ExitStack() as stack,
    ):
        started = time.perf_counter()
        where = DEPLOYMENTS[name](Path(workdir) / "redis", stack)
        run = _Run(where, Path(workdir), stack)
        setup_seconds = time.perf_counter() - started
        rates, latencies, spent = _measure_producer(run, args, log)
        jobs, in_jobs = _measure_jobs(run, args, log)
        log(f"{name} worker: {args.confirms:,} calls of each alone")
        with asyncio.Runner(loop_factory=fastest_event_loop) as runner:
            alone = runner.run(_measure_alone(run, args.confirms))
        where.check()
        seconds = time.perf_counter() - started
    median = statistics.median
    results: dict[str, Any] = {"title": where.title, "labels": list(where.labels)}
    for kind, label in (("single", "single_enqueue"), ("batch", "enqueue_many_1000")):
        results[f"{label}_per_s"] = _ratios(*(median(rates[kind][case]) for case in CASES))
        results[f"{label}_rounds_per_s"] = rates[kind]
    for percentile, share in (("p50", 0.5), ("p99", 0.99)):
        results[f"single_enqueue_{percentile}_ms"] = _ratios(
            *(_percentile(latencies[case], share) for case in CASES)
        )
    for kind in ("single", "batch"):
        results[f"{kind}_producer_calls_ms"] = {
            name: _spread(values) for name, values in spent[kind].items()
        }
    results["job_of_50_ms"] = _ratios(*(median(jobs[case]) for case in CASES))
    results["job_rounds_ms"] = jobs
    results["job_calls_ms"] = {
        case: {name: _spread(values) for name, values in in_jobs[case].items()} for case in CASES
    }
    results["alone_ms"] = {name: _spread(values) for name, values in alone.items()}
    results["seconds"] = {"setup": setup_seconds, "total": seconds}
    return results


DEPLOYMENTS: dict[str, Callable[[Path, ExitStack], _Deployment]] = {
    "sentinel": _Sentinel,
    "plain": _Plain,
}


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far (``/proc/stat``'s first line, in ticks), or None."""
    try:
        with open("/proc/stat") as stat:
            return [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _cpu_shares(before: list[int] | None, after: list[int] | None) -> dict[str, float] | None:
    """What the CPUs did in between: busy (user, nice, system, irq, softirq), idle (with
    iowait), and stolen by the hypervisor for other machines."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=False)][:8]
    total = sum(spent) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = spent
    return {
        "busy": (user + nice + system + irq + softirq) / total,
        "idle": (idle + iowait) / total,
        "steal": steal / total,
    }


def measure_replication(
    args: argparse.Namespace, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Every figure of each deployment of ``args.deployments``."""
    started, ticks = time.perf_counter(), _cpu_ticks()
    results: dict[str, Any] = {
        name: _measure_deployment(name, args, log) for name in args.deployments
    }
    results["parameters"] = {
        "singles": args.singles,
        "batches_of_1000": args.batches,
        "rounds": args.rounds,
        "jobs": args.jobs,
        "alone": args.confirms,
        "timeout_seconds": ProcessSettings.model_fields["redis_replica_timeout_seconds"].default,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "cpu_shares": _cpu_shares(ticks, _cpu_ticks()),
        "redis_server": redis_server_binary(),
        "seconds": time.perf_counter() - started,
    }
    return results


def _us(spent: dict[str, float]) -> str:
    return f"p50 {spent['p50'] * 1000:>6,.0f} µs, p99 {spent['p99'] * 1000:>6,.0f} µs"


def _share(spent_ms: float, whole_ms: float, what: str) -> str:
    return (
        f" = {spent_ms / whole_ms:6.2%} of {what}, implied ratio"
        f" {whole_ms / (whole_ms + spent_ms):.3f}"
    )


def _figure_lines(r: dict[str, Any]) -> list[str]:
    """The title, and each figure of the two cases with their ratio."""
    without_label, with_label = r["labels"]
    rows = [
        ("single enqueue, e-mails/s", r["single_enqueue_per_s"], ",.0f"),
        ("single enqueue p50, ms", r["single_enqueue_p50_ms"], ".3f"),
        ("single enqueue p99, ms", r["single_enqueue_p99_ms"], ".3f"),
        ("enqueue_many(1000), e-mails/s", r["enqueue_many_1000_per_s"], ",.0f"),
        ("worker job of 50 e-mails (median), ms", r["job_of_50_ms"], ".1f"),
    ]
    lines = [r["title"], ""]
    lines.append(f"{'case':38} {without_label:>13} {with_label:>13} {'ratio':>6}")
    for label, figures, spec in rows:
        lines.append(
            f"{label:38} {figures['without']:>13{spec}} {figures['with']:>13{spec}} "
            f"{figures['ratio']:>6.3f}"
        )
    return lines


def _producer_lines(r: dict[str, Any]) -> list[str]:
    """The time inside the producers' timed calls, against the case without replicas."""
    single_ms = r["single_enqueue_p50_ms"]["without"]
    batch_ms = 1000 / r["enqueue_many_1000_per_s"]["without"] * 1000
    lines = ["", f"time inside the calls, per call, against the case {r['labels'][0]}:"]
    for kind, whole, what in (
        ("single", single_ms, "its p50"),
        ("batch", batch_ms, "a batch"),
    ):
        spent = r[f"{kind}_producer_calls_ms"]
        title = "single enqueue" if kind == "single" else "enqueue_many(1000)"
        total = spent["total"]
        lines.append(
            f"  {title + ', require+confirm':36} {_us(total)}{_share(total['p50'], whole, what)}"
        )
        for name, label in (
            ("follow", "in follow()"),
            ("under_way", "in under_way(), 3 sentinels"),
        ):
            if name in spent:
                lines.append(f"    {label:34} {_us(spent[name])}")
    return lines


def _job_lines(r: dict[str, Any]) -> list[str]:
    """The time inside a worker job's timed calls, then each call timed alone."""
    without_label, with_label = r["labels"]
    job_ms = r["job_of_50_ms"]["without"]
    jobs = r["job_calls_ms"]
    lines = []
    before_ms = job_ms
    if "wait_out" in jobs["without"]:
        waited = jobs["without"]["wait_out"]
        before_ms = job_ms - waited["p50"]
        lines.append(
            f"  {'job, wait_out() at ' + without_label:36} {_us(waited)} (in its job too;"
            f" a job without it: {before_ms:.1f} ms)"
        )
    timed = [name for name in ("wait_out", "confirm") if name in jobs["with"]]
    added = sum(jobs["with"][name]["p50"] for name in timed)
    for name in timed:
        label = f"job, {name}() at {with_label}"
        lines.append(f"  {label:36} {_us(jobs['with'][name])}")
    lines.append(
        f"  {'job, all of them at ' + with_label:36} p50 {added * 1000:>6,.0f} µs"
        f"{_share(added, before_ms, 'a job with none')} (measured:"
        f" {r['job_of_50_ms']['with'] / before_ms:.3f})"
    )
    for name, label in (
        ("confirm", "confirm() alone"),
        ("under_way", "under_way() alone"),
        ("wait_out", "wait_out() alone"),
        ("ping", "one PING, for scale"),
    ):
        if name in r["alone_ms"]:
            lines.append(f"  {label:36} {_us(r['alone_ms'][name])}")
    return lines


def _run_lines(r: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """What was run, and each round's figures."""
    lines = [
        "",
        f"medians of {p['rounds']} rounds of {p['singles']:,} single enqueues and of "
        f"{p['batches_of_1000']} x 1,000 per case (latencies: all rounds); {p['jobs']} jobs "
        f"per case; {p['alone']:,} calls of each alone; {r['seconds']['total']:.0f} s "
        f"(of which {r['seconds']['setup']:.1f} s starting Redis)",
    ]
    for key, label, spec in (
        ("single_enqueue_rounds_per_s", "single enqueue, e-mails/s", ",.0f"),
        ("enqueue_many_1000_rounds_per_s", "enqueue_many(1000), e-mails/s", ",.0f"),
        ("job_rounds_ms", "job of 50, ms", ".0f"),
    ):
        rounds = "; ".join(
            f"{case_label} " + " ".join(f"{v:{spec}}" for v in r[key][case])
            for case, case_label in zip(CASES, r["labels"], strict=True)
        )
        lines.append(f"each run, {label}: {rounds}")
    return lines


def _table(r: dict[str, Any], p: dict[str, Any]) -> str:
    lines = [*_figure_lines(r), *_producer_lines(r), *_job_lines(r), *_run_lines(r, p)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only",
        choices=list(DEPLOYMENTS),
        help="one deployment (default: Sentinel, then the plain redis:// one)",
    )
    parser.add_argument("--singles", type=int, default=1000, help="single enqueues per round")
    parser.add_argument("--batches", type=int, default=3, help="enqueue_many(1000) per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (median kept)")
    parser.add_argument("--jobs", type=int, default=15, help="worker jobs of 50 per case")
    parser.add_argument("--confirms", type=int, default=1000, help="calls of each timed alone")
    args = parser.parse_args()
    args.deployments = [args.only] if args.only else list(DEPLOYMENTS)
    # A SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so every server and the sink stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    log(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = measure_replication(args, log)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    parameters = results["parameters"]
    for name in args.deployments:
        print(_table(results[name], parameters))
        print()
    shares = parameters["cpu_shares"]
    cpu = (
        f"; CPUs during the run: {shares['busy']:.0%} busy, {shares['steal']:.0%} stolen by the"
        " hypervisor"
        if shares
        else ""
    )
    print(
        f"{parameters['cpus']} CPUs; load average after: "
        f"{' '.join(f'{v:.2f}' for v in parameters['load_average_after'])}{cpu}; "
        f"{parameters['seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
