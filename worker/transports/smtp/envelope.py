"""One mail transaction on an open SMTP session: MAIL, RCPT for each recipient, DATA."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPStatus

from config.errors import DeliveryError
from worker.transports.base import BeforeData
from worker.transports.smtp.session import greeted

__all__ = ["Refusals", "Submission", "transfer"]

# The recipients a server refused, with its reply to each.
Refusals = dict[str, aiosmtplib.SMTPResponse]


@dataclass(frozen=True, slots=True)
class Submission:
    """What every transaction of one message carries: the sender, the message's bytes (CRLF
    throughout), and whether the session speaks SMTPUTF8."""

    sender: str
    data: bytes
    utf8: bool


async def transfer(
    connection: aiosmtplib.SMTP,
    submission: Submission,
    recipients: Sequence[str],
    before_data: BeforeData,
) -> tuple[Refusals, str]:
    """One envelope: MAIL, RCPT for each recipient, DATA; the refused recipients and the reply.
    ``before_data`` may stop it before DATA: the envelope is then reset and the session kept.

    aiosmtplib's ``sendmail`` does the same, but normalizes the line endings of the whole
    message once more to compute SIZE and parses every address twice; the data is already
    CRLF throughout (its length is the size), and the addresses are addr-specs checked at
    enqueue, which go into the commands as they are (aiosmtplib still refuses CR and LF).
    """
    await greeted(connection)
    try:
        refused = await _envelope(connection, submission, recipients)
        if len(refused) == len(recipients):
            await _reset(connection)  # nobody to send to: end the envelope, keep the session
            return refused, ""
        try:
            before_data()
        except DeliveryError:
            await _reset(connection)
            raise
        response = await connection.data(submission.data)
    except aiosmtplib.SMTPResponseException:
        await _reset(connection)
        raise
    return refused, response.message


async def _envelope(
    connection: aiosmtplib.SMTP, submission: Submission, recipients: Sequence[str]
) -> Refusals:
    """MAIL (raising when the sender is refused), then RCPT for each recipient."""
    encoding = "utf-8" if submission.utf8 else "ascii"
    sender = submission.sender
    options = [b"SIZE=%d" % len(submission.data)] if connection.supports_extension("size") else []
    if submission.utf8:
        options.append(b"SMTPUTF8")
    response = await connection.execute_command(
        b"MAIL", _path(b"FROM:", sender, encoding), *options
    )
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    refused: Refusals = {}
    for recipient in recipients:
        response = await connection.execute_command(b"RCPT", _path(b"TO:", recipient, encoding))
        if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            refused[recipient] = response
    return refused


def _path(keyword: bytes, address: str, encoding: str) -> bytes:
    return keyword + b"<" + address.encode(encoding) + b">"


async def _reset(connection: aiosmtplib.SMTP) -> None:
    """End a refused envelope so the session can carry the next one (as ``sendmail`` does)."""
    with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
        await connection.rset()
