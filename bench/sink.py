"""An SMTP sink in its own process (STARTTLS + AUTH, like a submission server) that counts.

It offers ESMTP PIPELINING (RFC 2920) by default, as Exim, Postfix and Exchange do (aiosmtpd
answers pipelined commands in order but does not say so in its EHLO reply). With
``processes`` > 1 that many processes accept on the one port (SO_REUSEPORT, the kernel
spreading connections among them), so a sink serving many sessions is not one core's work.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import ssl
import tempfile
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from peers.redis_server import free_port
from peers.smtp_peer import offering_pipelining

USERNAME, PASSWORD = "bench", "bench-password"


class _CountingHandler:
    def __init__(self, counter: Synchronized[int], delay: float) -> None:
        self._counter = counter
        self._delay = delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self._delay:
            await asyncio.sleep(self._delay)
        with self._counter.get_lock():
            self._counter.value += 1
        return "250 2.0.0 OK"


class _PipeliningHandler(_CountingHandler):
    async def handle_EHLO(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return offering_pipelining(session, hostname, responses)


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


async def _accept(
    port: int, context: ssl.SSLContext, handler: _CountingHandler, ready: Any
) -> None:
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=context,
            require_starttls=True,
            authenticator=_authenticate,
            auth_require_tls=True,
            decode_data=False,
            enable_SMTPUTF8=True,  # as aiosmtpd's Controller defaults it
            loop=loop,
        )

    server = await loop.create_server(session, "127.0.0.1", port, reuse_port=True, backlog=512)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready.release()
    await stop.wait()
    server.close()


def _serve(
    port: int,
    cert_dir: str,
    delay: float,
    pipelining: bool,
    counter: Synchronized[int],
    ready: Any,
) -> None:
    # aiosmtpd warns about its own deprecated login_data on every login: not our concern here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
    handler = (_PipeliningHandler if pipelining else _CountingHandler)(counter, delay)
    asyncio.run(_accept(port, context, handler, ready))


class Sink:
    """The sink's processes; ``accepted`` counts messages they answered 250 to."""

    def __init__(
        self,
        certificate: trustme.LeafCert,
        *,
        data_delay_seconds: float = 0.0,
        pipelining: bool = True,
        processes: int = 1,
    ) -> None:
        self.port = free_port()
        self.pipelining = pipelining
        self._cert_dir = tempfile.TemporaryDirectory()
        certificate.private_key_and_cert_chain_pem.write_to_path(
            str(Path(self._cert_dir.name) / "cert.pem")
        )
        certificate.private_key_pem.write_to_path(str(Path(self._cert_dir.name) / "key.pem"))
        context = multiprocessing.get_context("spawn")
        self._counter: Synchronized[int] = context.Value("q", 0)
        ready = context.Semaphore(0)
        args = (
            self.port,
            self._cert_dir.name,
            data_delay_seconds,
            pipelining,
            self._counter,
            ready,
        )
        self._processes = [
            context.Process(target=_serve, args=args, daemon=True) for _ in range(processes)
        ]
        for process in self._processes:
            process.start()
        for _ in self._processes:
            if not ready.acquire(timeout=30):
                self.stop()
                raise RuntimeError("SMTP sink did not start")

    @property
    def accepted(self) -> int:
        return int(self._counter.value)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.join(10)
        self._cert_dir.cleanup()
