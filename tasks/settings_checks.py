"""The settings window's two checks: Test connection and Send test e-mail, run directly."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from config.errors import PermanentError
from config.mail_settings import OAuthSettings, SmtpAuth, SmtpSettings
from worker.message import OutgoingMessage
from worker.records import RecipientState
from worker.transports.base import Transport
from worker.transports.factory import HttpClients, TransportOptions, create_transport

__all__ = ["TEST_SUBJECT", "check_connection", "send_test_email"]

TEST_SUBJECT = "outbox test e-mail"


@contextlib.asynccontextmanager
async def _transport(
    settings: SmtpSettings | OAuthSettings, options: TransportOptions
) -> AsyncIterator[Transport]:
    """A transport for one check, with HTTP clients of its own, all closed afterwards."""
    http = HttpClients.build(options)
    transport = create_transport(settings, options, http)
    try:
        yield transport
    finally:
        await transport.aclose()
        await http.aclose()


async def check_connection(
    settings: SmtpSettings | OAuthSettings, options: TransportOptions
) -> str:
    """Connect, secure and log in as configured; raises DeliveryError with the precise reason."""
    async with _transport(settings, options) as transport:
        await transport.verify()
    if isinstance(settings, SmtpSettings):
        who = f" as {settings.login_mailbox}" if settings.login_mailbox else ""
        if settings.auth is SmtpAuth.OAUTH2:
            who += f" with OAuth 2.0 (a token from {settings.instance}{settings.tenant})"
        unverified = (
            " (its certificate was not verified: accept any certificate is on)"
            if settings.warnings()
            else ""
        )
        return f"connected to {settings.server}:{settings.port}{who}{unverified}"
    return f"token acquired from {settings.instance}{settings.tenant} for {settings.api_url}"


async def send_test_email(
    settings: SmtpSettings | OAuthSettings, options: TransportOptions, message_id_domain: str
) -> str:
    """Send a short message to the from mailbox with these settings, saved or not."""
    message = OutgoingMessage(
        message_id=f"<test-{uuid.uuid4().hex}@{message_id_domain}>",
        to=(settings.from_mailbox,),
        subject=TEST_SUBJECT,
        text="This test e-mail was sent by outbox to check the mail settings.\n",
    )
    async with _transport(settings, options) as transport:
        result = await transport.send(message, message.recipients, time.time())
    if result.captured is not None:
        # The staging modes hold for the test e-mail too: nothing leaves outbox.
        return (
            "test e-mail captured, not sent: the delivery mode is capture (Test connection "
            "still checks the server)"
        )
    refused = [r for r in result.recipients if r.status is not RecipientState.SENT]
    if refused:
        raise PermanentError(
            f"server refused {refused[0].address}: {refused[0].code} {refused[0].reply}",
            code=refused[0].code,
            reply=refused[0].reply,
        )
    if settings.redirect_to:
        return f"test e-mail sent to {', '.join(settings.redirect_to)} (delivery mode redirect)"
    return f"test e-mail sent to {settings.from_mailbox}"
