"""An SMTP sink in its own process (STARTTLS + AUTH, like a submission server) that counts."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import ssl
import tempfile
import threading
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from peers.redis_server import free_port

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


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def _serve(port: int, cert_dir: str, delay: float, counter: Synchronized[int], ready: Any) -> None:
    # aiosmtpd warns about its own deprecated login_data on every login: not our concern here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
    controller = Controller(
        _CountingHandler(counter, delay),
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_require_tls=True,
        decode_data=False,
    )
    controller.start()
    ready.set()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    controller.stop()


class Sink:
    """The sink process; ``accepted`` counts messages it answered 250 to."""

    def __init__(self, certificate: trustme.LeafCert, *, data_delay_seconds: float = 0.0) -> None:
        self.port = free_port()
        self._cert_dir = tempfile.TemporaryDirectory()
        certificate.private_key_and_cert_chain_pem.write_to_path(
            str(Path(self._cert_dir.name) / "cert.pem")
        )
        certificate.private_key_pem.write_to_path(str(Path(self._cert_dir.name) / "key.pem"))
        context = multiprocessing.get_context("spawn")
        self._counter: Synchronized[int] = context.Value("q", 0)
        ready = context.Event()
        self._process = context.Process(
            target=_serve,
            args=(self.port, self._cert_dir.name, data_delay_seconds, self._counter, ready),
            daemon=True,
        )
        self._process.start()
        if not ready.wait(30):
            raise RuntimeError("SMTP sink did not start")

    @property
    def accepted(self) -> int:
        return int(self._counter.value)

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)
        self._cert_dir.cleanup()
