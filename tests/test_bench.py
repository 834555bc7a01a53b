"""The benchmark runs end to end and reports every figure (its numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys

from peers.processes import ROOT

FIGURES = {
    "limit_per_s",
    "naive_per_s",
    "outbox_per_s",
    "outbox_vs_naive",
    "outbox_vs_limit",
    "latency_p50_ms",
    "latency_p99_ms",
    "slow_server_per_s",
    "slow_server_bound_per_s",
    "graph_per_s",
    "graph_token_requests",
    "enqueue_per_s",
    "redis_bytes_per_message",
    "worker_rss_mb",
    "two_instances_vs_one",
    "commit",
}


def test_bench_reports_every_figure() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--json",
            "-n",
            "40",
            "--naive-n",
            "10",
            "--peer-n",
            "10",
            "--latency-n",
            "5",
            "--slow-n",
            "20",
            "--graph-n",
            "10",
            "--enqueue-n",
            "200",
            "--rounds",
            "1",
            # Minutes of real time by design (a quota per minute): measured by `make bench`,
            # and its behaviour by tests/test_shared_limits.py.
            "--skip-provider-limits",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures.keys() >= FIGURES
    for name in FIGURES - {"commit", "worker_rss_mb", "redis_bytes_per_message"}:
        assert figures[name] > 0, name
    assert figures["graph_throttled"] == 0
    assert all(0 < rss < 1000 for rss in figures["worker_rss_mb"].values())
    # The 100,000-e-mail figures need --scale, and say so without it.
    assert figures["throughput_100k_vs_2k"] is None
    assert "--scale" in figures["scale_skipped"]
    assert "--skip-provider-limits" in figures["provider_limits_skipped"]
    # The peer baseline runs when the bench extra is installed, and says so when it is not.
    if figures["peer_per_s"] is None:
        assert "pip install -e '.[bench]'" in figures["peer_skipped"]
        assert figures["vs_peer"] is None
    else:
        assert figures["vs_peer"] > 0
