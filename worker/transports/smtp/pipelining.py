"""ESMTP PIPELINING (RFC 2920) on aiosmtplib's connection: a transaction's commands in one write."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse, SMTPStatus
from aiosmtplib.protocol import SMTPProtocol

__all__ = ["PipelinedExchange", "dot_stuffed", "pipelined_exchange"]

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; servers send longer ones, aiosmtplib
# accepts up to 8192 per line and 2**17 per reply, and so does this reader.
_MAX_LINE = 8192
_MAX_REPLY = 2**17


def dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it: each line's leading period doubled (RFC 5321 §4.5.2)
    and the end-of-data line appended. ``data`` is CRLF throughout, so a line begins after
    each CRLF (a plain replace: a regular expression costs more than the rest of this)."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


class PipelinedExchange(asyncio.Protocol):
    """Writes on a session's transport, and keeps every reply the server sends, in order.

    aiosmtplib's protocol reads one reply per command it sent and drops what arrives before
    that reply is picked up, which is right for one command at a time and loses the replies of
    a pipelined group. For the length of one group this reader takes the transport (asyncio's
    public ``set_protocol``; TLS, the login and EHLO were aiosmtplib's and stay its), and hands
    it back after; a connection lost meanwhile is reported to aiosmtplib's protocol as well.
    """

    def __init__(
        self,
        owner: SMTPProtocol,
        transport: asyncio.WriteTransport,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._owner = owner
        self._transport = transport
        self._loop = loop
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: deque[SMTPResponse] = deque()
        self._failure: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.server_closing = False  # a 421 came: the server closes the session

    def commands(self, commands: Sequence[bytes]) -> None:
        """``commands`` (each one line without its CRLF) in one write."""
        for command in commands:
            if b"\r" in command or b"\n" in command or b"\0" in command:
                # What aiosmtplib refuses in a command is refused here too: no injection.
                raise ValueError("Command arg contains a prohibited control character")
        self.write(b"".join(command + b"\r\n" for command in commands))

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._transport.write(data)

    async def reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply, in the order of the commands written."""
        while not self._replies:
            if self._failure is not None:
                raise self._failure
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from exc
        reply = self._replies.popleft()
        if reply.code == SMTPStatus.domain_unavailable:
            self.server_closing = True
        return reply

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport, as aiosmtplib does

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    def _parse(self) -> None:
        while (end := self._buffer.find(b"\n")) != -1:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > _MAX_LINE or sum(map(len, self._lines)) > _MAX_REPLY:
                raise aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response, "Response too long"
                )
            if not line[:3].isdigit():
                raise aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response,
                    f"Malformed SMTP response line: {line.decode('utf-8', 'ignore')}",
                )
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._replies.append(SMTPResponse(int(line[:3]), text))
                self._lines = []

    def _fail(self, failure: aiosmtplib.SMTPException) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@contextlib.contextmanager
def pipelined_exchange(connection: aiosmtplib.SMTP) -> Iterator[PipelinedExchange]:
    """The session's transport written and read by a ``PipelinedExchange`` until the block
    ends, then given back to aiosmtplib's protocol (unless it was lost meanwhile)."""
    protocol, transport = connection.protocol, connection.transport
    if protocol is None or transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    # A connected session's transport is a stream (aiosmtplib writes on it the same way).
    stream = cast(asyncio.WriteTransport, transport)
    exchange = PipelinedExchange(protocol, stream, asyncio.get_running_loop())
    transport.set_protocol(exchange)
    try:
        yield exchange
    except BaseException:
        # A group cut short leaves replies unread, which a later command would take for its
        # own: the session is closed, as aiosmtplib closes one after a timeout.
        connection.close()
        raise
    finally:
        if exchange.server_closing:
            connection.close()  # as aiosmtplib does after a 421
        if not transport.is_closing():
            transport.set_protocol(protocol)
