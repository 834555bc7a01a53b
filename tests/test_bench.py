"""The benchmark runs end to end and reports every figure (its numbers are not judged here)."""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import time

import aiosmtplib
import trustme

from bench.latency_proxy import running_latency_proxy
from bench.sink import PASSWORD, USERNAME, Sink
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
    "four_instances_vs_one",
    "wan_vs_bound",
    "wan_vs_raw",
    "worker_cpu_us_per_email",
    "api_vs_framework",
    "api_p99_ms",
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
            "--wan-n",
            "40",
            "--cpu-n",
            "100",
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


RTT = 0.040


async def _through_proxy() -> tuple[list[float], list[float], float]:
    """Round trips of one line at a time; then ten lines written 2 ms apart: how long each
    took to come back, and how long all ten took from the first write."""
    echoed = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        echoed.set()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with running_latency_proxy(port, RTT) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello\n")  # the connection to the echo server is opened meanwhile
        assert await reader.readline() == b"hello\n"
        single = []
        for n in range(5):
            started = time.perf_counter()
            writer.write(b"%d\n" % n)
            assert await reader.readline() == b"%d\n" % n
            single.append(time.perf_counter() - started)
        written = []
        for n in range(10):
            written.append(time.perf_counter())
            writer.write(b"line %d\n" % n)
            await writer.drain()
            await asyncio.sleep(0.002)
        each = []
        for n in range(10):
            assert await reader.readline() == b"line %d\n" % n  # in order
            each.append(time.perf_counter() - written[n])
        all_ten = time.perf_counter() - written[0]
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(echoed.wait(), 5)  # the close reaches the echo server
    server.close()
    await server.wait_closed()
    return single, each, all_ten


def test_latency_proxy_delays_every_byte_by_half_the_round_trip_each_way() -> None:
    single, each, all_ten = asyncio.run(_through_proxy())
    # Never early, and not much late.
    assert min(single) >= RTT, single
    assert statistics.median(single) < 0.060, single
    # Ten writes in flight at once each take one round trip: delayed, not throttled (one
    # at a time they would take ten; a chunk at a time, five).
    assert min(each) >= RTT, each
    assert all_ten < 3.5 * RTT, (all_ten, each)


async def _submit(port: int, context: ssl.SSLContext) -> set[str]:
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=True,
        tls_context=context,
        username=USERNAME,
        password=PASSWORD,
        local_hostname="bench",
    )
    await smtp.connect()
    extensions = set(smtp.esmtp_extensions)
    await smtp.sendmail("robot@example.com", ["user@example.com"], b"Subject: hi\r\n\r\nhi\r\n")
    await smtp.quit()
    await asyncio.sleep(0.05)  # the TLS close_notify exchange, before the loop closes
    return extensions


def test_starttls_and_auth_through_the_latency_proxy(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    sink = Sink(server_certificate)
    try:
        with running_latency_proxy(sink.port, 0.01) as proxy:
            extensions = asyncio.run(_submit(proxy.port, client_tls_context))
        assert sink.accepted == 1
        # The sink offers PIPELINING, as Exim, Postfix and Exchange do.
        assert "pipelining" in extensions
    finally:
        sink.stop()
