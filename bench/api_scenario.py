"""The HTTP enqueue path: ``POST /api/emails`` from 32 keep-alive clients, one 1 KB text
e-mail per request, no worker running; against a minimal FastAPI app doing only the
framework's work (``bench.framework_app``) on the same uvicorn options, alternating."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack

from bench.api_load import CONCURRENCY, LoadResult, measure
from bench.env import BenchEnv, Figures, running, wait_until
from peers.processes import Service, run_outbox
from peers.redis_server import free_port
from tasks.cli.processes import default_workers
from tasks.queues import QUEUES
from worker.records import DeliveryStatus, status_index_key

__all__ = ["scenario_api"]

SECONDS = 5.0  # measured per round and server
WARMUP_SECONDS = 1.0  # the same load before each measurement, not counted
_STARTED = "Application startup complete."


def _producer_key(env: BenchEnv) -> str:
    """A producer key, created as a user creates one (``outbox keys create``)."""
    name = f"bench-api-{int(time.time() * 1000)}"
    created = run_outbox(
        env.outbox_env, "keys", "create", "--role", "producer", "--name", name, "--json"
    )
    if created.returncode != 0:
        raise RuntimeError(f"outbox keys create failed: {created.stderr.strip()}")
    key: str = json.loads(created.stdout)["key"]
    return key


def _serving(service: Service, processes: int, what: str) -> None:
    """Wait until every one of the server's ``processes`` has started its application."""
    wait_until(
        lambda: service.output.count(_STARTED) >= processes or service.exited,
        60,
        what,
        poll_seconds=0.1,
    )
    if service.exited:
        raise RuntimeError(f"{what} exited:\n{service.output[-3000:]}")


def _queued(env: BenchEnv) -> tuple[int, int]:
    """Records queued, and tasks waiting in the broker's send queues."""
    pipe = env.redis.pipeline(transaction=False)
    pipe.zcard(status_index_key(DeliveryStatus.QUEUED))
    for name in QUEUES.values():
        pipe.llen(name)
    records, *tasks = pipe.execute()
    return int(records), sum(int(each) for each in tasks)


def _client_ceiling(env: BenchEnv) -> float:
    """The load generator against a server that answers a fixed 202: requests per second it
    can drive at all on this machine."""
    port = free_port()
    command = [sys.executable, "-m", "bench.api_load", "serve", "--port", str(port)]
    with running(command, env.outbox_env) as trivial:
        trivial.wait_for_output("serving on")
        url = f"http://127.0.0.1:{port}/api/emails"
        return measure(url, seconds=SECONDS, warmup_seconds=WARMUP_SECONDS).per_s


def _check_recorded(env: BenchEnv, before: tuple[int, int], results: list[LoadResult]) -> int:
    """Every 202 is a queued record with its task in the broker; every request got one."""
    answered: Counter[str] = Counter()
    for result in results:
        answered.update(result.statuses)
        answered.update(result.warmup_statuses)
    if set(answered) != {"202"}:
        raise RuntimeError(f"outbox api answered other than 202: {answered}")
    accepted = sum(r.accepted for r in results)
    records, tasks = _queued(env)
    recorded = (records - before[0], tasks - before[1])
    if recorded != (accepted, accepted):
        raise RuntimeError(
            f"{accepted} e-mails accepted, but {recorded[0]} new queued records and "
            f"{recorded[1]} new tasks in the broker"
        )
    return accepted


def scenario_api(env: BenchEnv) -> Figures:
    """``outbox api`` (its default: one process per core) and the framework baseline (as
    many processes), both running, measured in turn for ``--rounds`` rounds; the medians,
    outbox's latencies, the load generator's own ceiling, and a check that every accepted
    e-mail was stored and queued."""
    processes = default_workers()
    env.log(
        f"api: POST /api/emails, {CONCURRENCY} keep-alive clients, 1 KB text, "
        f"{env.options.rounds} rounds of {SECONDS:g} s, no worker running"
    )
    authorization = f"Bearer {_producer_key(env)}"
    before = _queued(env)
    api_port, framework_port = free_port(), free_port()
    with ExitStack() as stack:
        api_command = ["outbox", "api", "--port", str(api_port)]
        framework_command = [sys.executable, "-m", "bench.framework_app"]
        api = stack.enter_context(running(api_command, env.outbox_env))
        framework = stack.enter_context(
            running([*framework_command, "--port", str(framework_port)], env.outbox_env)
        )
        _serving(api, processes, "outbox api")
        _serving(framework, processes, "the framework baseline")
        outbox_results, framework_results = [], []
        for _ in range(env.options.rounds):
            outbox_results.append(
                measure(
                    f"http://127.0.0.1:{api_port}/api/emails",
                    authorization=authorization,
                    seconds=SECONDS,
                    warmup_seconds=WARMUP_SECONDS,
                )
            )
            framework_results.append(
                measure(
                    f"http://127.0.0.1:{framework_port}/api/emails",
                    seconds=SECONDS,
                    warmup_seconds=WARMUP_SECONDS,
                )
            )
    recorded = _check_recorded(env, before, outbox_results)
    api_per_s = statistics.median(r.per_s for r in outbox_results)
    framework_per_s = statistics.median(r.per_s for r in framework_results)
    return {
        "api_per_s": api_per_s,
        "framework_per_s": framework_per_s,
        "api_vs_framework": api_per_s / framework_per_s,
        "api_p50_ms": statistics.median(r.p50_ms for r in outbox_results),
        "api_p99_ms": statistics.median(r.p99_ms for r in outbox_results),
        "framework_p99_ms": statistics.median(r.p99_ms for r in framework_results),
        "api_processes": float(processes),
        "api_recorded": float(recorded),
        "api_client_ceiling_per_s": _client_ceiling(env),
        "api_rounds": {
            "api_per_s": [r.per_s for r in outbox_results],
            "framework_per_s": [r.per_s for r in framework_results],
            "api_p99_ms": [r.p99_ms for r in outbox_results],
            "framework_p99_ms": [r.p99_ms for r in framework_results],
        },
    }


def main() -> None:
    """``python -m bench.api_scenario [--rounds N] [--json]``: this scenario alone, on the
    benchmark's own set-up."""
    from bench.__main__ import parse_options, report
    from bench.env import bench_env

    options = parse_options()
    with bench_env(options) as env:
        report(scenario_api(env), options)


if __name__ == "__main__":
    main()
