"""The Transport interface every way of sending implements, and what a send returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.classify import FailureKind, SmtpReply, classify
from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState

__all__ = ["SendResult", "Transport", "refused_recipient"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """The server's verdict per recipient after the message was handed over."""

    recipients: tuple[RecipientOutcome, ...]
    code: int | None = None
    reply: str | None = None


class Transport(Protocol):
    """Sends messages with one version of the settings; reusable across many messages.

    ``send`` raises ``worker.errors.DeliveryError`` subclasses for whole-message failures and
    reports per-recipient refusals in the ``SendResult``.
    """

    async def send(
        self, message: OutgoingMessage, recipients: Sequence[str], date: float
    ) -> SendResult: ...

    async def verify(self) -> None:
        """Prove the settings work (connect and log in, or get a token) without sending."""

    async def aclose(self) -> None: ...


def refused_recipient(address: str, code: int, reply: str) -> RecipientOutcome:
    """A recipient the server refused: deferred when the refusal is transient, else failed."""
    kind = classify(SmtpReply(code, "rcpt"))
    state = RecipientState.DEFERRED if kind is FailureKind.TRANSIENT else RecipientState.FAILED
    return RecipientOutcome(address, state, code, reply)
