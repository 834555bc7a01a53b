"""The settings window's two checks: Test connection and Send test e-mail, run directly."""

from __future__ import annotations

import time
import uuid

from config.mail_settings import OAuthSettings, SmtpSettings
from worker.errors import PermanentError
from worker.message import OutgoingMessage
from worker.records import RecipientState
from worker.transports.factory import TransportOptions, create_transport

TEST_SUBJECT = "outbox test e-mail"


async def check_connection(
    settings: SmtpSettings | OAuthSettings, options: TransportOptions
) -> str:
    """Connect, secure and log in as configured; raises DeliveryError with the precise reason."""
    transport = create_transport(settings, options)
    try:
        await transport.verify()
    finally:
        await transport.aclose()
    if isinstance(settings, SmtpSettings):
        who = f" as {settings.username}" if settings.username else ""
        return f"connected to {settings.server}:{settings.port}{who}"
    return "token acquired"


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
    transport = create_transport(settings, options)
    try:
        result = await transport.send(message, message.recipients, time.time())
    finally:
        await transport.aclose()
    refused = [r for r in result.recipients if r.status is not RecipientState.SENT]
    if refused:
        raise PermanentError(
            f"server refused {refused[0].address}: {refused[0].code} {refused[0].reply}",
            code=refused[0].code,
            reply=refused[0].reply,
        )
    return f"test e-mail sent to {settings.from_mailbox}"
