"""One SMTP session: opened (connect, TLS as the settings say, log in), greeted, and quit."""

from __future__ import annotations

from dataclasses import dataclass

import aiosmtplib

from config.errors import ConfigurationError, DeliveryError
from config.mail_settings import SmtpAuth, SmtpSettings, TlsMode
from worker.tls import TlsContexts
from worker.transports.identity import TokenSource
from worker.transports.smtp.errors import SMTP_FAILURES, server_address, smtp_error
from worker.transports.smtp.sent_secrets import SentSecrets

__all__ = ["SessionOpener", "SessionOptions", "greeted", "quit_session"]

# How TLS mode asks aiosmtplib for STARTTLS (implicit TLS is asked for apart, with use_tls).
_START_TLS: dict[TlsMode, bool | None] = {
    TlsMode.AUTO: None,  # upgrade when offered
    TlsMode.STARTTLS: True,
    TlsMode.IMPLICIT: False,
    TlsMode.NONE: False,
}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How a process opens SMTP sessions, whatever the settings."""

    tls: TlsContexts
    timeout: float
    # The name the sessions give in EHLO.
    local_hostname: str


class SessionOpener:
    """Opens logged-in sessions to the server of one version of the settings."""

    def __init__(
        self,
        settings: SmtpSettings,
        options: SessionOptions,
        tokens: TokenSource | None,
        secrets: SentSecrets,
    ) -> None:
        if settings.auth is SmtpAuth.OAUTH2 and tokens is None:
            raise ValueError("SMTP with auth oauth2 needs a token source")
        self._settings = settings
        self._tls_context = options.tls.for_settings(settings.accept_any_certificate)
        self._options = options
        self._tokens = tokens
        # Told of every access token before it is sent, so no reply can quote it unscrubbed.
        self._secrets = secrets
        self._where = server_address(settings)

    async def open(self) -> aiosmtplib.SMTP:
        """A new session, connected, secured as the TLS mode says and logged in."""
        settings = self._settings
        implicit = settings.uses_implicit_tls
        connection = aiosmtplib.SMTP(
            hostname=settings.server,
            port=settings.port,
            use_tls=implicit,
            start_tls=False if implicit else _START_TLS[settings.tls],
            tls_context=self._tls_context,
            timeout=self._options.timeout,
            local_hostname=self._options.local_hostname,
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
        await greeted(connection)
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


async def greeted(connection: aiosmtplib.SMTP) -> None:
    """EHLO once per session; HELO when the server refuses EHLO, as ``sendmail`` does."""
    if not connection.is_ehlo_or_helo_needed:
        return
    try:
        await connection.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not connection.is_connected:
            raise
        await connection.helo()


async def quit_session(connection: aiosmtplib.SMTP) -> None:
    """QUIT politely; a session that cannot even say goodbye is closed."""
    try:
        await connection.quit()
    except SMTP_FAILURES:
        connection.close()
