"""SmtpTransport: the Transport that sends over a pool of SMTP sessions (aiosmtplib)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import aiosmtplib

from config.addresses import needs_smtputf8
from config.errors import DeliveryError, PermanentError, QuotaError, TransientError
from config.mail_settings import SmtpSettings
from worker.message import OutgoingMessage
from worker.mime import build_mime
from worker.records import RecipientOutcome, RecipientState
from worker.transports.base import BeforeData, SendResult, go_ahead, refused_recipient
from worker.transports.identity import TokenSource
from worker.transports.smtp.envelope import Submission
from worker.transports.smtp.errors import SMTP_FAILURES, server_address
from worker.transports.smtp.pool import SessionPool
from worker.transports.smtp.sent_secrets import SentSecrets
from worker.transports.smtp.session import SessionOpener, SessionOptions, greeted, quit_session
from worker.transports.smtp.transactions import Transferred, send_error, send_in_transactions

__all__ = ["SmtpTransport"]


class _Mime(Protocol):
    """The message's bytes for a session with SMTPUTF8 (``utf8=True``) or without."""

    def __call__(self, *, utf8: bool) -> bytes: ...


class SmtpTransport:
    """Sends through one SMTP server with up to ``max_connections`` sessions kept open."""

    def __init__(
        self,
        settings: SmtpSettings,
        options: SessionOptions,
        *,
        max_connections: int,
        tokens: TokenSource | None = None,
    ) -> None:
        self._settings = settings
        self._secrets = SentSecrets(settings)
        self._pool = SessionPool(
            SessionOpener(settings, options, tokens, self._secrets), max_connections
        )
        self._where = server_address(settings)

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
            await quit_session(await self._pool.open())
        except DeliveryError as error:
            self._secrets.scrub_in_place(error)
            raise

    async def aclose(self) -> None:
        await self._pool.aclose()

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
        async with self._pool.slot():
            connection, reused = await self._pool.checkout()
            try:
                return await self._attempt(connection, message, mime, recipients, before_data)
            except TransientError:
                # A kept-open session that the server closed is no reason to wait a backoff:
                # reconnect once. The fixed Message-ID makes a rare duplicate detectable.
                if not reused or connection.is_connected:
                    raise
            return await self._attempt(
                await self._pool.open(), message, mime, recipients, before_data
            )

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
                await self._pool.release(connection)
            raise
        except BaseException:
            connection.close()
            raise
        await self._pool.release(connection)
        return result

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
                await send_in_transactions(
                    connection,
                    Submission(sender, mime(utf8=utf8), utf8),
                    sendable,
                    before_data,
                    self._settings,
                )
                if sendable
                else Transferred()
            )
        except SMTP_FAILURES as exc:
            raise send_error(connection, exc, self._settings) from exc
        stopped = done.stopped_by
        return SendResult(
            tuple(self._outcome(address, done, utf8) for address in recipients),
            code=250 if done.reply else None,
            reply=done.reply or None,
            quota=stopped if isinstance(stopped, QuotaError) else None,
        )

    async def _utf8_session(
        self, connection: aiosmtplib.SMTP, message: OutgoingMessage, recipients: Sequence[str]
    ) -> bool:
        """Whether to send with SMTPUTF8: only when an address needs it and the server offers
        it (headers then go as UTF-8; without it they go as RFC 2047 encoded words)."""
        addresses = (self._settings.from_mailbox, *message.to, *message.cc, *message.reply_to)
        if not any(map(needs_smtputf8, (*addresses, *recipients))):
            return False
        await greeted(connection)
        return connection.supports_extension("smtputf8")

    def _outcome(self, address: str, done: Transferred, utf8: bool) -> RecipientOutcome:
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
