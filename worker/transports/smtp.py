"""SMTP transport over aiosmtplib: a capped pool of logged-in connections reused across messages."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence

import aiosmtplib

from config.mail_settings import SmtpSettings, TlsMode
from worker.classify import (
    ConnectionProblem,
    ConnectionProblemKind,
    FailureKind,
    SmtpPhase,
    SmtpReply,
    classify,
)
from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    error_type,
)
from worker.message import OutgoingMessage
from worker.mime import build_mime
from worker.records import RecipientOutcome, RecipientState
from worker.tls import TlsContexts
from worker.transports.base import SendResult

_PHASE_WORDS: dict[SmtpPhase, str] = {
    "connect": "refused the connection",
    "tls": "refused STARTTLS",
    "auth": "rejected the login",
    "mail": "refused the sender",
    "rcpt": "refused the recipient",
    "data": "refused the message",
}


def reply_error(code: int, message: str, phase: SmtpPhase) -> DeliveryError:
    """The error for an SMTP error reply, classed by the one classifier."""
    return error_type(classify(SmtpReply(code, phase)))(
        f"SMTP server {_PHASE_WORDS[phase]}: {code} {message}", code=code, reply=message
    )


def _problem_error(kind: ConnectionProblemKind, reason: str) -> DeliveryError:
    return error_type(classify(ConnectionProblem(kind)))(reason)


class _ConnectionLostError(Exception):
    """The connection broke mid-session; the caller may reconnect once."""

    def __init__(self, error: DeliveryError) -> None:
        super().__init__(error.reason)
        self.error = error


class SmtpTransport:
    """Sends through one SMTP server with up to ``max_connections`` sessions kept open."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        tls: TlsContexts,
        timeout: float,
        max_connections: int,
        local_hostname: str,
    ) -> None:
        self._settings = settings
        self._tls_context = tls.for_settings(settings.accept_any_certificate)
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[aiosmtplib.SMTP] = []
        self._closed = False

    @property
    def _where(self) -> str:
        return f"{self._settings.server}:{self._settings.port}"

    async def send(
        self, message: OutgoingMessage, recipients: Sequence[str], date: float
    ) -> SendResult:
        data = build_mime(message, self._settings.from_mailbox, date)
        async with self._slots:
            connection, reused = await self._checkout()
            try:
                return await self._attempt(connection, data, recipients)
            except _ConnectionLostError as lost:
                if not reused:
                    raise lost.error from lost.__cause__
            # A kept-open session that the server closed is no reason to wait a backoff:
            # reconnect once. The fixed Message-ID makes a rare duplicate detectable.
            connection = await self._connect()
            try:
                return await self._attempt(connection, data, recipients)
            except _ConnectionLostError as lost:
                raise lost.error from lost.__cause__

    async def verify(self) -> None:
        await _quit(await self._connect())

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await _quit(connection)

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection, True
        return await self._connect(), False

    async def _attempt(
        self, connection: aiosmtplib.SMTP, data: bytes, recipients: Sequence[str]
    ) -> SendResult:
        """Send on ``connection`` and give it back to the pool while it is still usable."""
        try:
            result = await self._send_on(connection, data, recipients)
        except DeliveryError:
            # A refused command leaves the session usable (aiosmtplib sent RSET).
            await self._release(connection)
            raise
        except BaseException:
            connection.close()
            raise
        await self._release(connection)
        return result

    async def _release(self, connection: aiosmtplib.SMTP) -> None:
        if not self._closed:
            self._idle.append(connection)
            return
        # Retired while this send was in flight (the settings changed): do not keep it.
        await _quit(connection)

    async def _send_on(
        self, connection: aiosmtplib.SMTP, data: bytes, recipients: Sequence[str]
    ) -> SendResult:
        try:
            refused, reply = await connection.sendmail(
                self._settings.from_mailbox, list(recipients), data
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {
                r.recipient: aiosmtplib.SMTPResponse(r.code, r.message) for r in exc.recipients
            }
            reply = ""
        except aiosmtplib.SMTPSenderRefused as exc:
            raise reply_error(exc.code, exc.message, "mail") from exc
        except aiosmtplib.SMTPDataError as exc:
            raise reply_error(exc.code, exc.message, "data") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise reply_error(exc.code, exc.message, "mail") from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            connection.close()
            kind: ConnectionProblemKind = (
                "timeout" if isinstance(exc, aiosmtplib.SMTPTimeoutError) else "disconnected"
            )
            raise _ConnectionLostError(
                _problem_error(kind, f"connection to {self._where} lost while sending: {exc}")
            ) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentError(f"SMTP server cannot take this message: {exc}") from exc
        return SendResult(
            tuple(self._outcome(address, refused) for address in recipients),
            code=250 if reply else None,
            reply=reply or None,
        )

    @staticmethod
    def _outcome(address: str, refused: dict[str, aiosmtplib.SMTPResponse]) -> RecipientOutcome:
        response = refused.get(address)
        if response is None:
            return RecipientOutcome(address, RecipientState.SENT, 250, "accepted")
        kind = classify(SmtpReply(response.code, "rcpt"))
        state = RecipientState.DEFERRED if kind is FailureKind.TRANSIENT else RecipientState.FAILED
        return RecipientOutcome(address, state, response.code, response.message)

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self._settings
        implicit = settings.uses_implicit_tls
        start_tls: bool | None = {
            TlsMode.AUTO: None,  # upgrade when offered
            TlsMode.STARTTLS: True,
            TlsMode.IMPLICIT: False,
            TlsMode.NONE: False,
        }[settings.tls]
        connection = aiosmtplib.SMTP(
            hostname=settings.server,
            port=settings.port,
            use_tls=implicit,
            start_tls=False if implicit else start_tls,
            tls_context=self._tls_context,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
        )
        try:
            await connection.connect()
        except aiosmtplib.SMTPResponseException as exc:
            connection.close()
            # Only STARTTLS raises a reply error after the greeting and EHLO went well.
            greeting_or_ehlo = (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)
            phase: SmtpPhase = "connect" if isinstance(exc, greeting_or_ehlo) else "tls"
            raise reply_error(exc.code, exc.message, phase) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            connection.close()
            raise self._connect_error(exc) from exc
        if settings.username:
            await self._login(connection)
        return connection

    async def _login(self, connection: aiosmtplib.SMTP) -> None:
        settings = self._settings
        if connection.get_transport_info("sslcontext") is None and settings.tls is not TlsMode.NONE:
            connection.close()
            raise ConfigurationError(
                f"SMTP server {self._where} did not offer STARTTLS; refusing to send the password "
                "unencrypted (set TLS mode 'none' to allow it)"
            )
        password = settings.password.get_secret_value() if settings.password else ""
        try:
            await connection.login(settings.username or "", password)
        except aiosmtplib.SMTPResponseException as exc:
            connection.close()
            raise reply_error(exc.code, exc.message, "auth") from exc
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            # A broken connection says nothing about the credentials: retry later.
            connection.close()
            kind: ConnectionProblemKind = (
                "timeout" if isinstance(exc, aiosmtplib.SMTPTimeoutError) else "disconnected"
            )
            raise _problem_error(
                kind, f"connection to {self._where} lost during login: {exc}"
            ) from exc
        except aiosmtplib.SMTPException as exc:
            connection.close()
            raise ConfigurationError(f"SMTP login to {self._where} impossible: {exc}") from exc

    def _connect_error(self, exc: BaseException) -> DeliveryError:
        causes = _causes(exc)
        for cause in causes:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return _problem_error(
                    "certificate",
                    f"certificate of {self._where} not trusted ({cause.verify_message}); "
                    "turn on 'accept any certificate' or trust its CA with OUTBOX_CA_BUNDLE",
                )
            if isinstance(cause, ssl.SSLError):
                return _problem_error(
                    "tls",
                    f"TLS handshake with {self._where} failed ({cause.reason}); "
                    "check the TLS mode for this port",
                )
            if isinstance(cause, socket.gaierror):
                return _problem_error("dns", f"cannot resolve host {self._settings.server!r}")
            if isinstance(cause, ConnectionRefusedError):
                return _problem_error("refused", f"connection to {self._where} refused")
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError):
            return _problem_error("timeout", f"timed out connecting to {self._where}")
        if type(exc) is aiosmtplib.SMTPException:
            # Raised by aiosmtplib itself, e.g. "STARTTLS extension not supported by server"
            # with TLS mode starttls: only a settings change can help.
            return _problem_error("tls", f"cannot secure the connection to {self._where}: {exc}")
        return _problem_error("disconnected", f"cannot connect to {self._where}: {exc}")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


async def _quit(connection: aiosmtplib.SMTP) -> None:
    try:
        await connection.quit()
    except (aiosmtplib.SMTPException, OSError):
        connection.close()
