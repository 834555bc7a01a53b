"""The transactions of one message on one session, as many as the recipient caps need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from config.errors import DeliveryError, QuotaError, TransientError
from config.mail_settings import SmtpSettings
from worker.classify import FailureKind, SmtpReply, classify
from worker.transports.base import BeforeData
from worker.transports.smtp.envelope import Refusals, Submission, transfer
from worker.transports.smtp.errors import SMTP_FAILURES, server_address, smtp_error

__all__ = ["Transferred", "send_error", "send_in_transactions"]


@dataclass(slots=True)
class Transferred:
    """What the transactions of one message did: who was refused (and with what reply), the
    last transaction's reply, and the error that stopped them early, if one did."""

    refused: Refusals = field(default_factory=dict)
    reply: str = ""
    stopped_by: DeliveryError | None = None
    unsent: frozenset[str] = frozenset()

    def stopped(self, error: DeliveryError, unsent: Sequence[str]) -> Transferred:
        """Stop here: ``unsent`` were not reached, for the reason ``error`` gives."""
        self.stopped_by = error
        self.unsent = frozenset(unsent)
        return self


async def send_in_transactions(
    connection: aiosmtplib.SMTP,
    submission: Submission,
    recipients: Sequence[str],
    before_data: BeforeData,
    settings: SmtpSettings,
) -> Transferred:
    """The message to ``recipients`` in as many transactions as it takes: at most
    ``max_recipients_per_message`` each, and those a server refused as too many for one
    transaction (452 / X.5.3, RFC 5321 §4.5.3.1.10) at once in the next. Every copy is
    the same message, with the same Message-ID.

    A failure in the first transaction fails the message as one; after a transaction
    went through, a failure leaves those recipients reached and the others deferred (or
    refused, as the reply says), so that no retry sends anyone a second copy.
    """
    per_transaction = settings.max_recipients_per_message or len(recipients)
    waiting = list(recipients)
    done = Transferred()
    while waiting:
        batch, waiting = waiting[:per_transaction], waiting[per_transaction:]
        try:
            refused, reply = await transfer(connection, submission, batch, before_data)
        except TransientError as held_back:
            # ``before_data`` stopped this transaction (its envelope was reset): those
            # already sent stay sent, the rest are deferred.
            if not done.reply:
                raise
            return done.stopped(held_back, [*batch, *waiting])
        except SMTP_FAILURES as exc:
            if not done.reply:
                raise
            return done.stopped(send_error(connection, exc, settings), [*batch, *waiting])
        done.reply = reply or done.reply
        over = _over_the_cap(batch, refused)
        if over:
            # The server's own cap is what it took: the rest go next, in batches that size.
            per_transaction = len(batch) - len(refused)
            waiting = over + waiting
            for address in over:
                del refused[address]
        done.refused.update(refused)
        quota = _quota_refusal(refused, server_address(settings))
        if quota is not None:
            # The account is over its quota: nothing more of it goes through now.
            return done.stopped(quota, waiting)
    return done


def send_error(
    connection: aiosmtplib.SMTP, exc: BaseException, settings: SmtpSettings
) -> DeliveryError:
    """The error for ``exc``, raised while sending on ``connection``; a session that it
    broke (a disconnect or a timeout) is closed first."""
    if isinstance(exc, OSError):
        connection.close()
    return smtp_error(exc, "send", settings.server, settings.port)


def _over_the_cap(batch: Sequence[str], refused: Refusals) -> list[str]:
    """Those of ``batch`` refused as too many for one transaction, when the server took
    others: then its own cap is known, and they can go in the next one."""
    if len(refused) == len(batch):
        return []
    return [a for a in batch if _too_many(refused.get(a))]


def _too_many(response: aiosmtplib.SMTPResponse | None) -> bool:
    return response is not None and (
        classify(SmtpReply(response.code, "rcpt", response.message)) is FailureKind.RECIPIENT_LIMIT
    )


def _quota_refusal(refused: Refusals, where: str) -> QuotaError | None:
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
