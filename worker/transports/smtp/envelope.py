"""One mail transaction on an open SMTP session: MAIL, RCPT for each recipient, DATA;
pipelined (RFC 2920) where the server offers it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPStatus

from config.errors import DeliveryError
from worker.transports.base import BeforeData
from worker.transports.smtp.pipelining import dot_stuffed, pipelined_exchange
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
    if connection.supports_extension("pipelining"):
        return await _pipelined(connection, submission, recipients, before_data)
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


async def _pipelined(
    connection: aiosmtplib.SMTP,
    submission: Submission,
    recipients: Sequence[str],
    before_data: BeforeData,
) -> tuple[Refusals, str]:
    """The same envelope as one group (RFC 2920 §3.1): MAIL, every RCPT and DATA in one
    write, their replies read in order, and the message once DATA's 354 is in: two round
    trips in all, where one command at a time takes three and one more per recipient.

    ``before_data`` is asked before the group is written: once DATA is sent the only way out
    of the transaction without sending is to drop the session, so the last moment that keeps
    it is one round trip earlier than without pipelining.
    """
    before_data()
    encoding = "utf-8" if submission.utf8 else "ascii"
    group = [
        b" ".join((b"MAIL", *_mail_arguments(connection, submission, encoding))),
        *(b"RCPT " + _path(b"TO:", recipient, encoding) for recipient in recipients),
        b"DATA",
    ]
    timeout = connection.timeout
    with pipelined_exchange(connection) as exchange:
        exchange.commands(group)
        mail = await exchange.reply(timeout)
        refused = _refusals(recipients, [await exchange.reply(timeout) for _ in recipients])
        data = await exchange.reply(timeout)
        ends = None
        if data.code == SMTPStatus.start_input:
            # DATA was taken (a server may, even with nobody to send to): only the end-of-data
            # line ends it, after the message or alone when there is nothing to send.
            sendable = mail.code == SMTPStatus.completed and len(refused) < len(recipients)
            exchange.write(dot_stuffed(submission.data) if sendable else b".\r\n")
            ends = await exchange.reply(timeout)
    if mail.code != SMTPStatus.completed:
        await _reset(connection)
        raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, submission.sender)
    if len(refused) == len(recipients):
        await _reset(connection)  # nobody to send to: end the envelope, keep the session
        return refused, ""
    if ends is None or ends.code != SMTPStatus.completed:
        refusal = ends or data  # the message refused, or DATA itself
        await _reset(connection)
        raise aiosmtplib.SMTPDataError(refusal.code, refusal.message)
    return refused, ends.message


async def _envelope(
    connection: aiosmtplib.SMTP, submission: Submission, recipients: Sequence[str]
) -> Refusals:
    """MAIL (raising when the sender is refused), then RCPT for each recipient."""
    encoding = "utf-8" if submission.utf8 else "ascii"
    response = await connection.execute_command(
        b"MAIL", *_mail_arguments(connection, submission, encoding)
    )
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, submission.sender)
    replies = [
        await connection.execute_command(b"RCPT", _path(b"TO:", recipient, encoding))
        for recipient in recipients
    ]
    return _refusals(recipients, replies)


def _mail_arguments(
    connection: aiosmtplib.SMTP, submission: Submission, encoding: str
) -> list[bytes]:
    """MAIL's reverse-path and parameters: the size, and SMTPUTF8 when the message needs it."""
    arguments = [_path(b"FROM:", submission.sender, encoding)]
    if connection.supports_extension("size"):
        arguments.append(b"SIZE=%d" % len(submission.data))
    if submission.utf8:
        arguments.append(b"SMTPUTF8")
    return arguments


def _refusals(recipients: Sequence[str], replies: Sequence[aiosmtplib.SMTPResponse]) -> Refusals:
    """The recipients whose RCPT was refused, with the reply to each."""
    return {
        recipient: reply
        for recipient, reply in zip(recipients, replies, strict=True)
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward)
    }


def _path(keyword: bytes, address: str, encoding: str) -> bytes:
    return keyword + b"<" + address.encode(encoding) + b">"


async def _reset(connection: aiosmtplib.SMTP) -> None:
    """End a refused envelope so the session can carry the next one (as ``sendmail`` does)."""
    with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
        await connection.rset()
