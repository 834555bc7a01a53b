"""A TCP proxy on loopback, in its own process, that delays every byte as a WAN link would.

Each chunk read from one side is written to the other ``rtt / 2`` after it was read, in
order, and nothing else: no delay per reply, no throttling per message, no batching beyond
the chunks that came due together. A client that sends its next command before the last
reply (ESMTP PIPELINING) gains exactly what it gains on a real link; one that waits pays a
round trip per command. Bytes are only forwarded, so TLS (STARTTLS too) passes through.

The connection to the target is opened half a round trip after the client's (its SYN's way
there), so a server's greeting arrives one round trip after the client connected. A real
link adds one round trip more for TCP's handshake, once per connection.

Its event loop waits in ``select()``, whose timeout is in microseconds (epoll's is in
milliseconds, rounded up: half a millisecond late per hop on average, 5 % of a 20 ms round
trip). ``lateness()`` says how late, beyond their time, the chunks were written.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import selectors
import signal
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from typing import Any

__all__ = ["LatencyProxy", "running_latency_proxy"]

_HOST = "127.0.0.1"


class _End(Enum):
    EOF = "eof"  # the source half-closed: half-close the target
    CLOSE = "close"  # the source's socket is gone: close the target


class _Pipe:
    """One direction of one connection: each chunk written to ``target`` ``delay`` after it
    was read, in order."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, on_eof: Any, stats: Any
    ) -> None:
        self._loop = loop
        self._delay = delay
        self._on_eof = on_eof
        self._stats = stats
        self._queue: deque[tuple[float, bytes | _End]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.target: asyncio.Transport | None = None
        self.eof_delivered = False

    def push(self, item: bytes | _End) -> None:
        self._queue.append((self._loop.time() + self._delay, item))
        if self._timer is None and self.target is not None:
            self._schedule()

    def attach(self, target: asyncio.Transport) -> None:
        self.target = target
        if self._queue and self._timer is None:
            self._schedule()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()

    def _schedule(self) -> None:
        self._timer = self._loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        target = self.target
        assert target is not None
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now:
            due, item = self._queue.popleft()
            self._stats[0] += 1
            self._stats[1] += now - due
            if target.is_closing():
                continue
            if item is _End.CLOSE:
                target.close()  # after its buffered writes
            elif item is _End.EOF:
                target.write_eof()
                self.eof_delivered = True
                self._on_eof()
            else:
                assert isinstance(item, bytes)
                target.write(item)
        if self._queue:
            self._schedule()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads goes into ``outgoing``."""

    def __init__(self, connection: _Connection, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._connection = connection
        self._outgoing = outgoing
        self._incoming = incoming
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._incoming.attach(transport)

    def data_received(self, data: bytes) -> None:
        self._outgoing.push(data)

    def eof_received(self) -> bool:
        self._outgoing.push(_End.EOF)
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._incoming.cancel()  # nowhere to write what was still coming
        if self.peer is not None and not self.peer.lost:
            self._outgoing.push(_End.CLOSE)

    # The socket this side's bytes go to is full: stop reading here until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Connection:
    """A client's connection and the one opened to the target for it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, target_port: int, stats: Any
    ) -> None:
        self._loop = loop
        self._target_port = target_port
        self._to_server = _Pipe(loop, delay, self._half_closed, stats)
        self._to_client = _Pipe(loop, delay, self._half_closed, stats)
        self.client = _Side(self, self._to_server, self._to_client)
        self.server = _Side(self, self._to_client, self._to_server)
        self.client.peer, self.server.peer = self.server, self.client
        self._opening: asyncio.Task[None] | None = None  # held: the loop only keeps weak refs
        loop.call_later(delay, self._start_opening)

    def _start_opening(self) -> None:
        self._opening = self._loop.create_task(self._open_server())

    async def _open_server(self) -> None:
        try:
            await self._loop.create_connection(lambda: self.server, _HOST, self._target_port)
        except OSError:
            self._to_client.push(_End.CLOSE)

    def _half_closed(self) -> None:
        """Both directions ended by half-closes: nothing more can come, close both."""
        if self._to_server.eof_delivered and self._to_client.eof_delivered:
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()


async def _proxy(
    target_port: int, rtt_seconds: float, port: Synchronized[int], stats: Any, ready: Any
) -> None:
    loop = asyncio.get_running_loop()

    def accepted() -> asyncio.Protocol:
        return _Connection(loop, rtt_seconds / 2, target_port, stats).client

    server = await loop.create_server(accepted, _HOST, 0, backlog=512)
    port.value = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready.set()
    await stop.wait()
    server.close()


def _serve(
    target_port: int,
    rtt_seconds: float,
    port: Synchronized[int],
    stats: SynchronizedArray[float],
    ready: Any,
) -> None:
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    # Only this process writes the counters: no lock on the way.
    loop.run_until_complete(_proxy(target_port, rtt_seconds, port, stats.get_obj(), ready))
    loop.close()


class LatencyProxy:
    """The proxy process: a connection to ``port`` reaches ``target_port`` (both on
    loopback) with ``rtt_seconds`` of round-trip time between the two."""

    def __init__(self, target_port: int, rtt_seconds: float) -> None:
        self.target_port = target_port
        self.rtt_seconds = rtt_seconds
        context = multiprocessing.get_context("spawn")
        port: Synchronized[int] = context.Value("i", 0)
        # Chunks written, and the seconds they were written late in all.
        self._stats: SynchronizedArray[float] = context.Array("d", 2)
        ready = context.Event()
        self._process = context.Process(
            target=_serve, args=(target_port, rtt_seconds, port, self._stats, ready), daemon=True
        )
        self._process.start()
        if not ready.wait(30):
            self._process.kill()
            raise RuntimeError("latency proxy did not start")
        self.port = int(port.value)

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None
        return pid

    def lateness(self) -> tuple[int, float]:
        """Chunks written so far, and the seconds they were late in all (beyond their
        ``rtt / 2``): the emulation's own error, from timers and the CPU being busy."""
        chunks, late = self._stats[:]
        return int(chunks), late

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@contextmanager
def running_latency_proxy(target_port: int, rtt_seconds: float) -> Iterator[LatencyProxy]:
    """A proxy to ``target_port`` with ``rtt_seconds`` of round trip; connect to its
    ``port``."""
    proxy = LatencyProxy(target_port, rtt_seconds)
    try:
        yield proxy
    finally:
        proxy.stop()
