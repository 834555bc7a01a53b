"""Scriptable aiosmtpd SMTP servers on 127.0.0.1 for integration tests."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "HOST",
    "ReceivedMessage",
    "SmtpPeer",
    "TlsMode",
    "offering_pipelining",
    "smtp_peer",
]

HOST = "127.0.0.1"

TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the peer accepted with 250 at the end of DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()  # the parameters of MAIL FROM, e.g. "SIZE=1234"


def _free_port() -> int:
    # Small race with other processes, but the kernel does not hand out a
    # just-released ephemeral port again straight away.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _server_context(certificate: trustme.LeafCert) -> ssl.SSLContext:
    # Purpose.CLIENT_AUTH gives a server-side context that does not ask for
    # client certificates (aiosmtpd warns otherwise).
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(ctx)
    return ctx


class SmtpPeer:
    """One aiosmtpd server running in a background thread on 127.0.0.1.

    Scripted behaviour (``rcpt_replies``, ``data_replies``,
    ``drop_next_connections``, ``data_delay_seconds``) may be changed by tests
    at any time; the server thread reads them on every command.
    """

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        certificate: trustme.LeafCert | None = None,
        credentials: dict[str, str] | None = None,
        port: int | None = None,
        smtputf8: bool = False,
        pipelining: bool = False,
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"unknown tls mode {tls!r}")
        if tls != "none" and certificate is None:
            raise ValueError(f"tls={tls!r} needs a certificate")
        self.host = HOST
        self.port = port if port is not None else _free_port()
        self.tls: TlsMode = tls
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        # The commands of every chunk the server read that began a transaction (MAIL FROM),
        # by verb: ["MAIL", "RCPT", "DATA"] when a client pipelined them (RFC 2920).
        self.transaction_chunks: list[list[str]] = []
        self.messages: list[ReceivedMessage] = []
        # Counts every client TCP connection, including dropped ones; never the
        # Controller's own start-up probe.
        self.connections = 0
        self.rcpt_replies: dict[str, str] = {}
        self.mail_replies: list[str] = []  # the next MAIL commands' replies, refusing them
        # Recipients at whose RCPT the server answers 421 and closes the connection.
        self.drop_at_rcpt: set[str] = set()
        self.data_replies: list[str] = []
        self.drop_next_connections = 0
        self.data_delay_seconds = 0.0
        # The most messages the server was taking at once (between the end of DATA and its
        # reply, which ``data_delay_seconds`` holds back): how many sends overlapped.
        self.most_data_at_once = 0
        self._data_now = 0
        self.ehlo_refused = False  # answer EHLO with 502, as an old HELO-only server does
        # Called with the recipients and the client's port when DATA ends, before the message
        # is accepted; a reply it returns is sent instead of accepting the message. A fault
        # test uses it to kill the process that is sending.
        self.on_data: Callable[[tuple[str, ...], int], str | None] | None = None
        self._credentials = dict(credentials) if credentials is not None else None
        self._ssl_context = _server_context(certificate) if certificate is not None else None
        self._lock = threading.Lock()
        self._controller: _PeerController | None = None
        self._probe_port: int | None = None
        self._live: set[_PeerSMTP] = set()

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def auth_required(self) -> bool:
        return self._credentials is not None

    def start(self) -> None:
        """Listen on ``self.port`` (the same port again after a ``stop()``)."""
        if self._controller is not None:
            raise RuntimeError("SmtpPeer is already running")
        controller = _PeerController(self, **self._controller_kwargs())
        try:
            controller.start()
        except BaseException:
            # A failed start leaves the thread's loop open; don't leak it.
            controller.stop(no_assert=True)
            if not controller.loop.is_closed():
                controller.loop.close()
            raise
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and cut every open client connection; idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # Abort clients first (FIFO with stop's own callback) so no transport
        # outlives the loop and clients see a prompt disconnect.
        controller.loop.call_soon_threadsafe(self._abort_clients)
        controller.stop()

    def __enter__(self) -> SmtpPeer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Return the accepted messages once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(self.messages)
            if len(snapshot) >= count:
                return snapshot
            if time.monotonic() >= deadline:
                # The envelopes of the last few only: thousands of whole messages would bury
                # the failure.
                last = [(m.mail_from, m.rcpt_tos) for m in snapshot[-5:]]
                raise AssertionError(
                    f"expected at least {count} message(s) on {self.host}:{self.port} "
                    f"within {timeout}s, got {len(snapshot)}; the last envelopes: {last!r}"
                )
            time.sleep(0.02)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpPeer {self.tls} {self.host}:{self.port} {state}>"

    # -- internals, called from the server thread ---------------------------

    def _controller_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "hostname": self.host,
            "port": self.port,
            # Fixed banner name: avoids a socket.getfqdn() lookup per connection.
            "server_hostname": "localhost",
            "decode_data": False,
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.tls == "starttls":
            kwargs.update(
                tls_context=self._ssl_context, require_starttls=True, auth_require_tls=True
            )
        elif self.tls == "implicit":
            # aiosmtpd only knows about TLS it negotiated itself (STARTTLS), so
            # with a TLS listener it must be told not to insist on it for AUTH.
            kwargs.update(ssl_context=self._ssl_context, auth_require_tls=False)
        else:
            kwargs.update(auth_require_tls=False)
        if self._credentials is not None:
            kwargs["authenticator"] = self._authenticate
        return kwargs

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self._credentials is not None:
            login = auth_data.login.decode("utf-8", "surrogateescape")
            expected = self._credentials.get(login)
            if expected is not None and expected.encode() == auth_data.password:
                return AuthResult(success=True, auth_data=auth_data)
        # handled=False makes aiosmtpd answer "535 5.7.8 Authentication
        # credentials invalid".
        return AuthResult(success=False, handled=False)

    def _expect_probe(self, source_port: int) -> None:
        with self._lock:
            self._probe_port = source_port

    def _admit(self, protocol: _PeerSMTP, peername: object) -> bool:
        """Book-keep a new connection; False means it must be dropped."""
        with self._lock:
            is_probe = (
                isinstance(peername, tuple)
                and len(peername) >= 2
                and peername[1] == self._probe_port
            )
            if is_probe:
                # One-shot: the probe's source port may later be reused by a client.
                self._probe_port = None
                self._live.add(protocol)
                return True
            self.connections += 1
            if self.drop_next_connections > 0:
                self.drop_next_connections -= 1
                return False
            self._live.add(protocol)
            return True

    def _forget(self, protocol: _PeerSMTP) -> None:
        with self._lock:
            self._live.discard(protocol)

    def _abort_clients(self) -> None:
        with self._lock:
            live = list(self._live)
        for protocol in live:
            transport = protocol.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            elif transport is not None:
                transport.close()

    def _record(self, envelope: Envelope) -> None:
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_options=tuple(envelope.mail_options),
        )
        with self._lock:
            self.messages.append(message)

    def _next_data_reply(self) -> str | None:
        with self._lock:
            return self.data_replies.pop(0) if self.data_replies else None

    @contextmanager
    def _taking_data(self) -> Iterator[None]:
        with self._lock:
            self._data_now += 1
            self.most_data_at_once = max(self.most_data_at_once, self._data_now)
        try:
            yield
        finally:
            with self._lock:
                self._data_now -= 1

    def _next_mail_reply(self) -> str | None:
        with self._lock:
            return self.mail_replies.pop(0) if self.mail_replies else None


def offering_pipelining(session: Session, hostname: str, responses: list[str]) -> list[str]:
    """An aiosmtpd ``handle_EHLO`` reply that offers PIPELINING (RFC 2920): aiosmtpd reads
    pipelined commands in order but does not advertise the extension. The hook's duties:
    the session's host name, and the whole reply, every line "250-..." but the last."""
    session.host_name = hostname
    return [*responses[:-1], "250-PIPELINING", responses[-1]]


class _PeerHandler:
    """aiosmtpd handler hooks that consult the peer's scripted replies."""

    def __init__(self, peer: SmtpPeer) -> None:
        self._peer = peer

    # aiosmtpd finds hooks by these exact (upper-case) names.
    async def handle_EHLO(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not self._peer.pipelining:
            session.host_name = hostname  # the hook's duty once it exists
            return responses
        return offering_pipelining(session, hostname, responses)

    async def handle_MAIL(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = self._peer._next_mail_reply()
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self._peer.drop_at_rcpt:
            await server.push("421 4.3.2 Service shutting down")
            assert server.transport is not None
            server.transport.close()
            return "421 4.3.2 Service shutting down"
        reply = self._peer.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._peer._taking_data():
            return await self._data_reply(session, envelope)

    async def _data_reply(self, session: Session, envelope: Envelope) -> str:
        delay = self._peer.data_delay_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        on_data = self._peer.on_data
        if on_data is not None:
            # aiosmtpd's annotation says str; at run time it is the socket's peername.
            client: tuple[str, int] = session.peer  # type: ignore[assignment]
            override = on_data(tuple(envelope.rcpt_tos), client[1])
            if override is not None:
                return override
        reply = self._peer._next_data_reply()
        if reply is not None:
            return reply
        self._peer._record(envelope)
        return "250 OK"


class _PeerSMTP(SMTP):
    """aiosmtpd SMTP protocol that counts, drops and enforces AUTH for the peer."""

    def __init__(self, handler: _PeerHandler, peer: SmtpPeer, **kwargs: object) -> None:
        # auth_required=True with auth_require_tls=False makes aiosmtpd emit a
        # UserWarning per connection (fatal under -W error); enforce it in
        # check_auth_needed() instead.
        super().__init__(handler, **kwargs)  # type: ignore[arg-type]
        self._peer = peer
        self._connected = False
        self._dropped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this a second time after STARTTLS on the same
        # connection; only the first call is a new TCP connection.
        if not self._connected:
            self._connected = True
            if not self._peer._admit(self, transport.get_extra_info("peername")):
                self._dropped = True
                transport.close()
                return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._peer._forget(self)
        if self._dropped:
            # SMTP.connection_lost assumes connection_made set up a session.
            return
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"MAIL FROM:"):
            lines = data.split(b"\r\n")
            self._peer.transaction_chunks.append([line[:4].decode() for line in lines if line])
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._dropped:
            # A dropped TLS connection still gets the client's close_notify.
            return False
        return super().eof_received()

    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802 - aiosmtpd's name
        if self._peer.ehlo_refused:
            await self.push("502 5.5.2 Error: command not recognized")
            return
        await super().smtp_EHLO(hostname)

    async def check_auth_needed(self, caller_method: str) -> bool:
        if self._peer.auth_required and not (self.session and self.session.authenticated):
            await self.push("530 5.7.0 Authentication required")
            return True
        return await super().check_auth_needed(caller_method)


class _PeerController(Controller):
    """Controller whose start-up probe the peer can tell apart from clients."""

    def __init__(self, peer: SmtpPeer, **kwargs: object) -> None:
        super().__init__(_PeerHandler(peer), **kwargs)  # type: ignore[arg-type]
        self._peer = peer

    def factory(self) -> SMTP:
        return _PeerSMTP(self.handler, self._peer, loop=self.loop, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Controller.start() connects once to make sure the server answers.
        # Same as aiosmtpd's probe, except the source port is bound first and
        # announced, so the probe is neither counted nor dropped.
        with ExitStack() as stack:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.settimeout(1.0)
            sock.bind((HOST, 0))
            self._peer._expect_probe(int(sock.getsockname()[1]))
            sock.connect((self.hostname, self.port))
            if self.ssl_context is not None:
                # Local liveness check only; the tests verify the certificate.
                client_ctx = ssl.create_default_context()
                client_ctx.check_hostname = False
                client_ctx.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(client_ctx.wrap_socket(sock))
            sock.recv(1024)


def smtp_peer(
    *,
    tls: TlsMode = "none",
    certificate: trustme.LeafCert | None = None,
    credentials: dict[str, str] | None = None,
    port: int | None = None,
    smtputf8: bool = False,
    pipelining: bool = False,
) -> SmtpPeer:
    """Build an unstarted peer; use it as a context manager or call start().

    ``credentials`` (username -> password) makes AUTH PLAIN/LOGIN mandatory;
    with ``tls="starttls"`` AUTH is only offered after STARTTLS; ``smtputf8`` offers the
    SMTPUTF8 extension (non-ASCII addresses); ``pipelining`` offers PIPELINING (RFC 2920).
    """
    return SmtpPeer(
        tls=tls,
        certificate=certificate,
        credentials=credentials,
        port=port,
        smtputf8=smtputf8,
        pipelining=pipelining,
    )
