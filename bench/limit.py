"""The protocol limit: raw aiosmtplib, pre-built messages, reused connections, nothing else.

aiosmtplib does not pipeline: each e-mail costs its four round trips (MAIL, RCPT, DATA, the
message), whatever the server offers."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiosmtplib

from bench.messages import BODY
from bench.sink import PASSWORD, USERNAME, Sink
from worker.message import OutgoingMessage
from worker.mime import build_mime


async def _send_all(
    port: int, context: ssl.SSLContext, messages: list[bytes], connections: int, connected: bool
) -> float:
    """Seconds to send them all; from the start, or with ``connected`` from when every
    connection is open (connect, STARTTLS, AUTH left out, as for a warmed-up worker)."""
    queue = list(reversed(messages))
    all_open = asyncio.Barrier(connections)
    started = time.perf_counter()

    async def connection_loop() -> None:
        nonlocal started
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
        if connected and await all_open.wait() == 0:
            started = time.perf_counter()
        while queue:
            data = queue.pop()
            await smtp.sendmail("robot@example.com", ["user@example.com"], data)
        await smtp.quit()

    await asyncio.gather(*(connection_loop() for _ in range(connections)))
    return time.perf_counter() - started


def measure_limit(
    sink: Sink,
    context: ssl.SSLContext,
    count: int,
    connections: int,
    *,
    port: int | None = None,
    connected: bool = False,
) -> float:
    """Messages per second to ``sink``, or through ``port`` (a proxy) to it; with
    ``connected``, timed from when every connection is open."""
    messages = [
        build_mime(
            OutgoingMessage(
                message_id=f"<{n}@bench>",
                to=(f"user{n}@example.com",),
                subject=f"Run results {n}",
                text=BODY,
            ),
            "robot@example.com",
            time.time(),
        )
        for n in range(count)
    ]
    before = sink.accepted
    elapsed = asyncio.run(
        _send_all(sink.port if port is None else port, context, messages, connections, connected)
    )
    assert sink.accepted - before == count
    return count / elapsed
