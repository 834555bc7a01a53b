"""Run every benchmark in one go and print the figures (``python -m bench [--json]``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from bench.env import REPO, WORKER_PROCESSES, BenchEnv, Figures, Options, bench_env
from bench.scenarios import SCENARIOS, Scenario


def run_scenarios(env: BenchEnv, scenarios: list[Scenario]) -> Figures:
    """Every scenario in order, on the one environment; their figures merged."""
    figures: Figures = {}
    for scenario in scenarios:
        figures.update(scenario(env))
    return figures


def _number(figures: Figures, name: str) -> float:
    value = figures[name]
    if not isinstance(value, int | float):
        raise TypeError(f"{name} is not a number: {value!r}")
    return value


def summary(env: BenchEnv, figures: Figures) -> Figures:
    """The ratios between scenarios' figures, and what the run was."""

    def ratio(top: str, bottom: str) -> float:
        return _number(figures, top) / _number(figures, bottom)

    return {
        "outbox_vs_naive": ratio("outbox_per_s", "naive_per_s"),
        "vs_peer": ratio("outbox_per_s", "peer_per_s") if figures["peer_per_s"] else None,
        "outbox_vs_limit": ratio("outbox_per_s", "limit_per_s"),
        "slow_server_vs_bound": ratio("slow_server_per_s", "slow_server_bound_per_s"),
        "slow_server_limit_vs_bound": ratio("slow_server_limit_per_s", "slow_server_bound_per_s"),
        "graph_vs_bound": ratio("graph_per_s", "graph_bound_per_s"),
        "worker_processes": WORKER_PROCESSES,
        "smtp_connections": env.connections,
        "messages": env.options.n,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def parse_options() -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-n", type=int, default=2000, help="messages for limit and outbox")
    parser.add_argument("--naive-n", type=int, default=500, help="messages for naive")
    parser.add_argument(
        "--peer-n", type=int, default=1000, help="messages for django-celery-email-reboot"
    )
    parser.add_argument("--latency-n", type=int, default=200)
    parser.add_argument("--slow-n", type=int, default=1000)
    parser.add_argument(
        "--wan-n", type=int, default=600, help="messages for outbox and raw across the WAN link"
    )
    parser.add_argument(
        "--wan-rtt-ms", type=float, default=20.0, help="the WAN link's round trip (latency proxy)"
    )
    parser.add_argument(
        "--cpu-n", type=int, default=3000, help="messages for the worker's CPU per e-mail"
    )
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
    return Options(**vars(parser.parse_args()))


def main() -> None:
    options = parse_options()
    with bench_env(options) as env:
        figures = run_scenarios(env, SCENARIOS)
    figures.update(summary(env, figures))
    report(figures, options)


def report(figures: Figures, options: Options) -> None:
    """The figures as one JSON object (``--json``), or a line each."""
    if options.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        print(f"{name:26} {shown}")


if __name__ == "__main__":
    main()
