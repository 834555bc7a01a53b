"""The secrets an SMTP transport sent, scrubbed out of every error and reply it hands back."""

from __future__ import annotations

import dataclasses
from collections import deque

from aiosmtplib.auth import auth_login_encode, auth_plain_encode, auth_xoauth2_encode

from config.errors import DeliveryError
from config.mail_settings import SmtpSettings
from worker.scrubbing import scrub, scrub_error
from worker.transports.base import SendResult

__all__ = ["SentSecrets"]


class SentSecrets:
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
