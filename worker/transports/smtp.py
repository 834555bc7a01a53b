"""SMTP transport over aiosmtplib: a capped pool of logged-in connections reused across messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiosmtplib
from aiosmtplib import SMTPStatus
from aiosmtplib.auth import auth_login_encode, auth_plain_encode, auth_xoauth2_encode

from config.addresses import needs_smtputf8
from config.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    QuotaError,
    TransientError,
)
from config.mail_settings import SmtpAuth, SmtpSettings, TlsMode
from worker.classify import (
    ConnectionProblem,
    ConnectionProblemKind,
    FailureKind,
    SmtpPhase,
    SmtpReply,
    classify,
    delivery_error,
    error_type,
    judge,
)
from worker.message import OutgoingMessage
from worker.mime import build_mime
from worker.records import RecipientOutcome, RecipientState
from worker.scrubbing import scrub, scrub_error
from worker.tls import TlsContexts
from worker.tokens import TokenSource
from worker.transports.base import BeforeData, SendResult, go_ahead, refused_recipient

__all__ = ["SmtpTransport", "smtp_error"]

# The stages of a session whose failures are translated; each names what was being done.
SmtpStage = Literal["connect", "login", "send"]
# Everything aiosmtplib, ssl and socket raise (ssl.SSLError and TimeoutError are OSErrors).
SMTP_FAILURES = (aiosmtplib.SMTPException, OSError)

_PHASE_WORDS: dict[SmtpPhase, str] = {
    "connect": "refused the connection",
    "tls": "refused STARTTLS",
    "auth": "rejected the login",
    "mail": "refused the sender",
    "rcpt": "refused the recipient",
    "data": "refused the message",
}


class _Mime(Protocol):
    """The message's bytes for a session with SMTPUTF8 (``utf8=True``) or without."""

    def __call__(self, *, utf8: bool) -> bytes: ...


def smtp_error(exc: BaseException, stage: SmtpStage, server: str, port: int) -> DeliveryError:
    """The one translation of an aiosmtplib, ssl or socket failure into outbox's errors,
    classed by the one classifier; ``stage`` says what the session was doing."""
    where = f"{server}:{port}"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(exc, _reply_phase(exc, stage))
    if stage == "connect":
        return _connect_error(exc, server, where)
    if stage == "send" and isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. SMTPUTF8 needed but not offered: another attempt cannot change that.
        return PermanentError(f"SMTP server cannot take this message: {exc}")
    if isinstance(exc, OSError):
        # A broken connection says nothing about the credentials or the message: retry later.
        kind: ConnectionProblemKind = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
        during = "during login" if stage == "login" else "while sending"
        return _problem_error(kind, f"connection to {where} lost {during}: {exc}")
    return ConfigurationError(f"SMTP login to {where} impossible: {exc}")


def _reply_phase(exc: aiosmtplib.SMTPResponseException, stage: SmtpStage) -> SmtpPhase:
    match stage:
        case "connect":
            # Only STARTTLS raises a reply error after the greeting and EHLO went well.
            greeting_or_ehlo = (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)
            return "connect" if isinstance(exc, greeting_or_ehlo) else "tls"
        case "login":
            return "auth"
        case "send":
            return "data" if isinstance(exc, aiosmtplib.SMTPDataError) else "mail"


def _reply_error(exc: aiosmtplib.SMTPResponseException, phase: SmtpPhase) -> DeliveryError:
    verdict = judge(SmtpReply(exc.code, phase, exc.message))
    reason = f"SMTP server {_PHASE_WORDS[phase]}: {exc.code} {exc.message}"
    if verdict.advice:
        reason = f"{reason}; {verdict.advice}"
    return delivery_error(verdict.kind, reason, code=exc.code, reply=exc.message)


def _problem_error(kind: ConnectionProblemKind, reason: str) -> DeliveryError:
    return error_type(classify(ConnectionProblem(kind)))(reason)


def _connect_error(exc: BaseException, server: str, where: str) -> DeliveryError:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _problem_error(
                "certificate",
                f"certificate of {where} not trusted ({cause.verify_message}); "
                "turn on 'accept any certificate' or trust its CA with OUTBOX_CA_BUNDLE",
            )
        if isinstance(cause, ssl.SSLError):
            return _problem_error(
                "tls",
                f"TLS handshake with {where} failed ({cause.reason}); "
                "check the TLS mode for this port",
            )
        if isinstance(cause, socket.gaierror):
            return _problem_error("dns", f"cannot resolve host {server!r}")
        if isinstance(cause, ConnectionRefusedError):
            return _problem_error("refused", f"connection to {where} refused")
    if isinstance(exc, TimeoutError):
        return _problem_error("timeout", f"timed out connecting to {where}")
    if type(exc) is aiosmtplib.SMTPException:
        # Raised by aiosmtplib itself, e.g. "STARTTLS extension not supported by server"
        # with TLS mode starttls: only a settings change can help.
        return _problem_error("tls", f"cannot secure the connection to {where}: {exc}")
    return _problem_error("disconnected", f"cannot connect to {where}: {exc}")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class _SentSecrets:
    """What a transport sent that must never come back out of it in an error or a reply: the
    password (plain, and base64 as AUTH PLAIN and LOGIN send it), the client secret, and the
    latest access tokens (plain, and as AUTH XOAUTH2 sends them). A server may quote any of
    them in a reply, and replies end up in delivery records, attempts and API answers."""

    # Access tokens remembered: enough for a refresh or two while a send is in flight.
    TOKENS_KEPT = 4

    def __init__(self, settings: SmtpSettings) -> None:
        fixed: list[str] = []
        mailbox = settings.login_mailbox
        if settings.password is not None:
            password = settings.password.get_secret_value()
            _, as_login = auth_login_encode(mailbox or "", password)
            fixed.extend((password, as_login.decode()))
            if mailbox:
                fixed.append(auth_plain_encode(mailbox, password).decode())
        if settings.client_secret is not None:
            fixed.append(settings.client_secret.get_secret_value())
        self._fixed = tuple(fixed)
        self._tokens: deque[str] = deque(maxlen=2 * self.TOKENS_KEPT)

    def token_sent(self, mailbox: str, token: str) -> None:
        if token not in self._tokens:
            self._tokens.extend((token, auth_xoauth2_encode(mailbox, token).decode()))

    def _all(self) -> tuple[str, ...]:
        return (*self._fixed, *self._tokens)

    def scrub_in_place(self, error: DeliveryError) -> None:
        """Scrub ``error`` in place: whoever catches it sees the same error, scrubbed."""
        scrub_error(error, self._all())

    def result(self, result: SendResult) -> SendResult:
        """``result`` with the replies of its recipients, its own and its quota's scrubbed."""
        secrets = self._all()
        if not secrets:
            return result

        def text(reply: str | None) -> str | None:
            return scrub(reply, secrets) if reply is not None else None

        return dataclasses.replace(
            result,
            recipients=tuple(
                dataclasses.replace(r, reply=text(r.reply)) for r in result.recipients
            ),
            reply=text(result.reply),
            quota=scrub_error(result.quota, secrets) if result.quota is not None else None,
        )


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
        tokens: TokenSource | None = None,
    ) -> None:
        if settings.auth is SmtpAuth.OAUTH2 and tokens is None:
            raise ValueError("SMTP with auth oauth2 needs a token source")
        self._settings = settings
        self._tokens = tokens
        self._secrets = _SentSecrets(settings)
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
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        """Send ``message`` to ``recipients``; nothing it returns or raises quotes a secret."""
        try:
            result = await self._send(message, recipients, date, before_data)
        except DeliveryError as error:
            self._secrets.scrub_in_place(error)
            raise
        return self._secrets.result(result)

    async def verify(self) -> None:
        try:
            await _quit(await self._connect())
        except DeliveryError as error:
            self._secrets.scrub_in_place(error)
            raise

    async def _send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData,
    ) -> SendResult:
        # Built once per send, in the form the session negotiates (with or without SMTPUTF8).
        mime = functools.cache(
            functools.partial(build_mime, message, self._settings.from_mailbox, date)
        )
        async with self._slots:
            connection, reused = await self._checkout()
            try:
                return await self._attempt(connection, message, mime, recipients, before_data)
            except TransientError:
                # A kept-open session that the server closed is no reason to wait a backoff:
                # reconnect once. The fixed Message-ID makes a rare duplicate detectable.
                if not reused or connection.is_connected:
                    raise
            return await self._attempt(
                await self._connect(), message, mime, recipients, before_data
            )

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
        self,
        connection: aiosmtplib.SMTP,
        message: OutgoingMessage,
        mime: _Mime,
        recipients: Sequence[str],
        before_data: BeforeData,
    ) -> SendResult:
        """Send on ``connection`` and give it back to the pool while it is still usable."""
        try:
            result = await self._send_on(connection, message, mime, recipients, before_data)
        except DeliveryError:
            # A refused command leaves the session usable (its envelope was reset); a lost one
            # was closed where it was lost.
            if connection.is_connected:
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
        self,
        connection: aiosmtplib.SMTP,
        message: OutgoingMessage,
        mime: _Mime,
        recipients: Sequence[str],
        before_data: BeforeData,
    ) -> SendResult:
        sender = self._settings.from_mailbox
        try:
            utf8 = await self._utf8_session(connection, message, recipients)
            if not utf8 and needs_smtputf8(sender):
                raise PermanentError(
                    f"SMTP server {self._where} does not offer SMTPUTF8, which the from "
                    f"mailbox {sender} needs (its part before the @-sign is not ASCII)"
                )
            sendable = [a for a in recipients if utf8 or not needs_smtputf8(a)]
            done = (
                await self._transactions(connection, sendable, mime(utf8=utf8), utf8, before_data)
                if sendable
                else _Transferred()
            )
        except SMTP_FAILURES as exc:
            if isinstance(exc, OSError):
                connection.close()  # the session is gone (disconnect or timeout)
            raise smtp_error(exc, "send", self._settings.server, self._settings.port) from exc
        stopped = done.stopped_by
        return SendResult(
            tuple(self._outcome(address, done, utf8) for address in recipients),
            code=250 if done.reply else None,
            reply=done.reply or None,
            quota=stopped if isinstance(stopped, QuotaError) else None,
        )

    async def _transactions(
        self,
        connection: aiosmtplib.SMTP,
        recipients: Sequence[str],
        data: bytes,
        utf8: bool,
        before_data: BeforeData,
    ) -> _Transferred:
        """The message to ``recipients`` in as many transactions as it takes: at most
        ``max_recipients_per_message`` each, and those a server refused as too many for one
        transaction (452 / X.5.3, RFC 5321 §4.5.3.1.10) at once in the next. Every copy is
        the same message, with the same Message-ID.

        A failure in the first transaction fails the message as one; after a transaction
        went through, a failure leaves those recipients reached and the others deferred (or
        refused, as the reply says), so that no retry sends anyone a second copy.
        """
        per_transaction = self._settings.max_recipients_per_message or len(recipients)
        waiting = list(recipients)
        done = _Transferred()
        while waiting:
            batch, waiting = waiting[:per_transaction], waiting[per_transaction:]
            try:
                batch_refused, batch_reply = await _transfer(
                    connection, self._settings.from_mailbox, batch, data, utf8, before_data
                )
            except TransientError as held_back:
                # ``before_data`` stopped this transaction (its envelope was reset): those
                # already sent stay sent, the rest are deferred.
                if not done.reply:
                    raise
                return done.stopped(held_back, [*batch, *waiting])
            except SMTP_FAILURES as exc:
                if not done.reply:
                    raise
                if isinstance(exc, OSError):
                    connection.close()
                error = smtp_error(exc, "send", self._settings.server, self._settings.port)
                return done.stopped(error, [*batch, *waiting])
            done.reply = batch_reply or done.reply
            over = [a for a in batch if _too_many(batch_refused.get(a))]
            if over and len(batch_refused) < len(batch):
                # The server's own cap is what it took: the rest go next, in batches that size.
                per_transaction = len(batch) - len(batch_refused)
                waiting = over + waiting
                for address in over:
                    del batch_refused[address]
            done.refused.update(batch_refused)
            quota = _quota_refusal(batch_refused, self._where)
            if quota is not None:
                # The account is over its quota: nothing more of it goes through now.
                return done.stopped(quota, waiting)
        return done

    async def _utf8_session(
        self, connection: aiosmtplib.SMTP, message: OutgoingMessage, recipients: Sequence[str]
    ) -> bool:
        """Whether to send with SMTPUTF8: only when an address needs it and the server offers
        it (headers then go as UTF-8; without it they go as RFC 2047 encoded words)."""
        addresses = (self._settings.from_mailbox, *message.to, *message.cc, *message.reply_to)
        if not any(map(needs_smtputf8, (*addresses, *recipients))):
            return False
        await _greeted(connection)
        return connection.supports_extension("smtputf8")

    def _outcome(self, address: str, done: _Transferred, utf8: bool) -> RecipientOutcome:
        if not utf8 and needs_smtputf8(address):
            return RecipientOutcome(
                address,
                RecipientState.FAILED,
                reply=f"SMTP server {self._where} does not offer SMTPUTF8, which this address "
                "needs (its part before the @-sign is not ASCII)",
            )
        stopped_by = done.stopped_by
        if stopped_by is not None and address in done.unsent:
            # Not reached: its transaction failed as a whole, or was never begun.
            state = (
                RecipientState.DEFERRED
                if isinstance(stopped_by, TransientError)
                else RecipientState.FAILED
            )
            return RecipientOutcome(
                address, state, stopped_by.code, stopped_by.reply or stopped_by.reason
            )
        response = done.refused.get(address)
        if response is None:
            return RecipientOutcome(address, RecipientState.SENT, 250, "accepted")
        return refused_recipient(address, response.code, response.message)

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
        except SMTP_FAILURES as exc:
            connection.close()
            raise smtp_error(exc, "connect", settings.server, settings.port) from exc
        if settings.login_mailbox:
            await self._login(connection, settings.login_mailbox)
        return connection

    async def _login(self, connection: aiosmtplib.SMTP, mailbox: str) -> None:
        settings = self._settings
        credential = "password" if settings.auth is SmtpAuth.PASSWORD else "access token"
        if connection.get_transport_info("sslcontext") is None and settings.tls is not TlsMode.NONE:
            connection.close()
            raise ConfigurationError(
                f"SMTP server {self._where} did not offer STARTTLS; refusing to send the "
                f"{credential} unencrypted (set TLS mode 'none' to allow it)"
            )
        try:
            if self._tokens is None:
                password = settings.password.get_secret_value() if settings.password else ""
                await connection.login(mailbox, password)
            else:
                await self._login_xoauth2(connection, mailbox, self._tokens)
        except SMTP_FAILURES as exc:
            connection.close()
            raise smtp_error(exc, "login", settings.server, settings.port) from exc
        except DeliveryError:
            connection.close()  # no token (the identity platform said why)
            raise

    async def _login_xoauth2(
        self, connection: aiosmtplib.SMTP, mailbox: str, tokens: TokenSource
    ) -> None:
        """AUTH XOAUTH2 (RFC 7628 as Microsoft and Google describe it); a cached token that
        the server refuses is replaced once, as a token revoked or expired early would be."""
        await _greeted(connection)
        if "xoauth2" not in connection.server_auth_methods:
            raise ConfigurationError(
                f"SMTP server {self._where} does not offer AUTH XOAUTH2 (it offers "
                f"{', '.join(connection.server_auth_methods) or 'no login'}); set "
                "Authentication to Password"
            )
        token = await tokens.token()
        try:
            await self._auth_xoauth2(connection, mailbox, token)
        except aiosmtplib.SMTPAuthenticationError:
            if not connection.is_connected:
                raise
            await self._auth_xoauth2(connection, mailbox, await tokens.refresh())

    async def _auth_xoauth2(self, connection: aiosmtplib.SMTP, mailbox: str, token: str) -> None:
        self._secrets.token_sent(mailbox, token)  # before the server can quote it
        await connection.auth_xoauth2(mailbox, token)


async def _transfer(
    connection: aiosmtplib.SMTP,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    utf8: bool,
    before_data: BeforeData,
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """One envelope: MAIL, RCPT for each recipient, DATA; the refused recipients and the reply.
    ``before_data`` may stop it before DATA: the envelope is then reset and the session kept.

    aiosmtplib's ``sendmail`` does the same, but normalizes the line endings of the whole
    message once more to compute SIZE and parses every address twice; ``data`` is already
    CRLF throughout (its length is the size), and the addresses are addr-specs checked at
    enqueue, which go into the commands as they are (aiosmtplib still refuses CR and LF).
    """
    await _greeted(connection)
    encoding = "utf-8" if utf8 else "ascii"
    options = [b"SIZE=%d" % len(data)] if connection.supports_extension("size") else []
    if utf8:
        options.append(b"SMTPUTF8")
    refused: dict[str, aiosmtplib.SMTPResponse] = {}
    try:
        response = await connection.execute_command(
            b"MAIL", _path(b"FROM:", sender, encoding), *options
        )
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
        for recipient in recipients:
            response = await connection.execute_command(b"RCPT", _path(b"TO:", recipient, encoding))
            if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                refused[recipient] = response
        if len(refused) == len(recipients):
            await _reset(connection)  # nobody to send to: end the envelope, keep the session
            return refused, ""
        try:
            before_data()
        except DeliveryError:
            await _reset(connection)
            raise
        response = await connection.data(data)
    except aiosmtplib.SMTPResponseException:
        await _reset(connection)
        raise
    return refused, response.message


def _too_many(response: aiosmtplib.SMTPResponse | None) -> bool:
    return response is not None and (
        classify(SmtpReply(response.code, "rcpt", response.message)) is FailureKind.RECIPIENT_LIMIT
    )


def _quota_refusal(refused: dict[str, aiosmtplib.SMTPResponse], where: str) -> QuotaError | None:
    """The quota error when the server refused a recipient for the account's sending quota."""
    for response in refused.values():
        kind = classify(SmtpReply(response.code, "rcpt", response.message))
        if kind.pauses_account:
            return QuotaError(
                f"SMTP server {where} refused a recipient for its sending quota: "
                f"{response.code} {response.message}",
                code=response.code,
                reply=response.message,
                daily=kind is FailureKind.DAILY_QUOTA,
            )
    return None


@dataclass(slots=True)
class _Transferred:
    """What the transactions of one message did: who was refused (and with what reply), the
    last transaction's reply, and the error that stopped them early, if one did."""

    refused: dict[str, aiosmtplib.SMTPResponse] = field(default_factory=dict)
    reply: str = ""
    stopped_by: DeliveryError | None = None
    unsent: frozenset[str] = frozenset()

    def stopped(self, error: DeliveryError, unsent: Sequence[str]) -> _Transferred:
        """Stop here: ``unsent`` were not reached, for the reason ``error`` gives."""
        self.stopped_by = error
        self.unsent = frozenset(unsent)
        return self


async def _greeted(connection: aiosmtplib.SMTP) -> None:
    """EHLO once per session; HELO when the server refuses EHLO, as ``sendmail`` does."""
    if not connection.is_ehlo_or_helo_needed:
        return
    try:
        await connection.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not connection.is_connected:
            raise
        await connection.helo()


def _path(keyword: bytes, address: str, encoding: str) -> bytes:
    return keyword + b"<" + address.encode(encoding) + b">"


async def _reset(connection: aiosmtplib.SMTP) -> None:
    """End a refused envelope so the session can carry the next one (as ``sendmail`` does)."""
    with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
        await connection.rset()


async def _quit(connection: aiosmtplib.SMTP) -> None:
    try:
        await connection.quit()
    except SMTP_FAILURES:
        connection.close()
