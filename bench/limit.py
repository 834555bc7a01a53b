"""The protocol limit: raw aiosmtplib, pre-built messages, reused connections, nothing else."""

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
    port: int, context: ssl.SSLContext, messages: list[bytes], connections: int
) -> None:
    queue = list(reversed(messages))

    async def connection_loop() -> None:
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
        while queue:
            data = queue.pop()
            await smtp.sendmail("robot@example.com", ["user@example.com"], data)
        await smtp.quit()

    await asyncio.gather(*(connection_loop() for _ in range(connections)))


def measure_limit(sink: Sink, context: ssl.SSLContext, count: int, connections: int) -> float:
    """Messages per second."""
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
    started = time.perf_counter()
    asyncio.run(_send_all(sink.port, context, messages, connections))
    elapsed = time.perf_counter() - started
    assert sink.accepted - before == count
    return count / elapsed
