"""HTTP load for the enqueue route: concurrent keep-alive clients posting a 1 KB text e-mail.

Each client is one HTTP/1.1 connection that writes a pre-built request, reads the whole
answer, and writes the next (closed loop), so the server always has ``concurrency`` requests
in hand. The client is raw asyncio streams on uvloop with every request built before the
clock starts: per request it does one write and reads a status line, headers and a
``Content-Length`` body, nothing else, so on a small machine it leaves the cores to the
servers it measures. Its own ceiling is measured the same way against ``serve_trivial``, a
server that answers every request with a fixed 202.

Run it in a process of its own (``python -m bench.api_load load URL``, the
``Authorization`` header from ``$BENCH_API_AUTHORIZATION``); it prints one JSON object,
``LoadResult.as_json``. ``measure`` does exactly that from another process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AUTHORIZATION_VARIABLE",
    "CONCURRENCY",
    "TEXT",
    "LoadResult",
    "email_body",
    "measure",
    "percentile",
    "run_load",
    "serve_trivial",
]

CONCURRENCY = 32
TEXT = ("Run 42 of the nightly schedule finished: 118 passed, 0 failed.\n" * 20)[:1000]
# The Authorization header's value, read from the environment rather than the command line
# (where every local user's `ps` would show the key).
AUTHORIZATION_VARIABLE = "BENCH_API_AUTHORIZATION"
_DISTINCT_REQUESTS = 1000  # pre-built and cycled through: recipients and subjects vary


def email_body(n: int) -> bytes:
    """The JSON of a 1 KB plain-text e-mail to one recipient."""
    fields = {"to": [f"user{n}@example.com"], "subject": f"Run results {n}", "text": TEXT}
    return json.dumps(fields).encode()


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` 0.99: the value 99 % of them do not pass)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one measured run did: completed requests, their rate and latencies, and the
    count of each status answered."""

    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    warmup_requests: int
    warmup_statuses: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "per_s": self.per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "statuses": self.statuses,
            "warmup_requests": self.warmup_requests,
            "warmup_statuses": self.warmup_statuses,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        return cls(
            requests=int(data["requests"]),
            seconds=float(data["seconds"]),
            per_s=float(data["per_s"]),
            p50_ms=float(data["p50_ms"]),
            p99_ms=float(data["p99_ms"]),
            statuses={str(k): int(v) for k, v in data["statuses"].items()},
            warmup_requests=int(data["warmup_requests"]),
            warmup_statuses={str(k): int(v) for k, v in data["warmup_statuses"].items()},
        )

    @property
    def accepted(self) -> int:
        """202 answers, the warm-up's included: e-mails the server took."""
        return self.statuses.get("202", 0) + self.warmup_statuses.get("202", 0)


def _requests(url: str, authorization: str | None) -> list[bytes]:
    parts = urlsplit(url)
    path = parts.path or "/"
    host = parts.netloc
    extra = f"Authorization: {authorization}\r\n" if authorization else ""
    built = []
    for n in range(_DISTINCT_REQUESTS):
        body = email_body(n)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        )
        built.append(head.encode() + body)
    return built


async def _answer_status(reader: asyncio.StreamReader) -> int:
    """Read one whole answer; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("a chunked answer: this client reads Content-Length bodies only")
    if length:
        await reader.readexactly(length)
    return status


@dataclass
class _Phase:
    """One phase's shared state: what is left to send, and what came back."""

    requests: list[bytes]
    count: int | None  # requests to send, or None: until the deadline
    deadline: float
    sent: int = 0

    def next_request(self) -> bytes | None:
        if self.count is not None and self.sent >= self.count:
            return None
        if self.count is None and time.perf_counter() >= self.deadline:
            return None
        self.sent += 1
        return self.requests[self.sent % len(self.requests)]


async def _run_phase(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    phase: _Phase,
) -> tuple[list[float], Counter[str], float]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := phase.next_request()) is not None:
            started = time.perf_counter()
            writer.write(request)
            status = await _answer_status(reader)
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(reader, writer) for reader, writer in connections))
    return latencies, statuses, time.perf_counter() - started


async def _load(
    url: str,
    *,
    authorization: str | None,
    concurrency: int,
    requests: int | None,
    seconds: float,
    warmup_seconds: float,
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    built = _requests(url, authorization)
    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    try:
        warmup = _Phase(built, None, time.perf_counter() + warmup_seconds)
        _, warmup_statuses, _ = await _run_phase(connections, warmup)
        measured = _Phase(built, requests, time.perf_counter() + seconds)
        latencies, statuses, elapsed = await _run_phase(connections, measured)
    finally:
        for _, writer in connections:
            writer.close()
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        per_s=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        statuses=dict(statuses),
        warmup_requests=warmup.sent,
        warmup_statuses=dict(warmup_statuses),
    )


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # Windows: asyncio's own loop
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run_load(
    url: str,
    *,
    authorization: str | None = None,
    concurrency: int = CONCURRENCY,
    requests: int | None = None,
    seconds: float = 5.0,
    warmup_seconds: float = 1.0,
) -> LoadResult:
    """``concurrency`` keep-alive clients posting to ``url``: for ``requests`` requests, or
    (None) for ``seconds``, after ``warmup_seconds`` of the same load that is not counted."""
    with _event_loop_runner() as runner:
        return runner.run(
            _load(
                url,
                authorization=authorization,
                concurrency=concurrency,
                requests=requests,
                seconds=seconds,
                warmup_seconds=warmup_seconds,
            )
        )


def measure(
    url: str,
    *,
    authorization: str | None = None,
    concurrency: int = CONCURRENCY,
    seconds: float = 5.0,
    warmup_seconds: float = 1.0,
) -> LoadResult:
    """``run_load`` in a process of its own (as a client on another machine would be: it
    competes with the servers for the cores, never for one interpreter)."""
    command = [
        sys.executable,
        *("-m", "bench.api_load", "load", url),
        *("--concurrency", str(concurrency), "--seconds", str(seconds)),
        *("--warmup-seconds", str(warmup_seconds)),
    ]
    env = {**os.environ, AUTHORIZATION_VARIABLE: authorization or ""}
    done = subprocess.run(  # noqa: S603 - this interpreter, our own module
        command, env=env, capture_output=True, text=True, check=False, timeout=seconds + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.strip()[-2000:]}")
    return LoadResult.from_json(json.loads(done.stdout))


_TRIVIAL_ANSWER = (
    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n"
    b'{"status":"queued"}'
)


async def _serve_trivial(host: str, port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(_TRIVIAL_ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    print(f"serving on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def serve_trivial(host: str, port: int) -> None:
    """A server that answers every request with the same 202 and does nothing else: what
    the load generator's own ceiling is measured against."""
    with _event_loop_runner() as runner:
        runner.run(_serve_trivial(host, port))


def _parse(arguments: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="post to URL; print one JSON object")
    load.add_argument("url")
    load.add_argument("--concurrency", type=int, default=CONCURRENCY)
    load.add_argument("--requests", type=int, default=None, help="this many, else --seconds")
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--warmup-seconds", type=float, default=1.0)
    serve = commands.add_parser("serve", help="the trivial server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    return parser.parse_args(arguments)


def main(arguments: list[str] | None = None) -> None:
    options = _parse(arguments)
    if options.command == "serve":
        serve_trivial(options.host, options.port)
        return
    result = run_load(
        options.url,
        authorization=os.environ.get(AUTHORIZATION_VARIABLE) or None,
        concurrency=options.concurrency,
        requests=options.requests,
        seconds=options.seconds,
        warmup_seconds=options.warmup_seconds,
    )
    print(json.dumps(result.as_json()))


if __name__ == "__main__":
    main()
