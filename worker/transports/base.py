"""The Transport interface every way of sending implements, and what a send returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from config.errors import QuotaError
from worker.classify import FailureKind, SmtpReply, classify
from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState

__all__ = ["BeforeData", "SendResult", "Transport", "go_ahead", "refused_recipient"]

BeforeData = Callable[[], None]
"""Called right before the message itself is handed over (SMTP's DATA, Graph's send request):
raises a ``TransientError`` when the attempt must stop there (its claim may be lost)."""


def go_ahead() -> None:
    """The ``BeforeData`` of a send that nothing can stop (a test e-mail)."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """The server's verdict per recipient after the message was handed over; ``quota`` when
    the provider's quota stopped the send part-way (the recipients not reached are deferred,
    and the account pauses); ``captured``, the MIME message kept instead of sent (the
    ``capture`` delivery mode)."""

    recipients: tuple[RecipientOutcome, ...]
    code: int | None = None
    reply: str | None = None
    quota: QuotaError | None = None
    captured: bytes | None = None


class Transport(Protocol):
    """Sends messages with one version of the settings; reusable across many messages.

    ``send`` raises ``config.errors.DeliveryError`` subclasses for whole-message failures and
    reports per-recipient refusals in the ``SendResult``. It calls ``before_data`` at the last
    moment the message can still be held back, and stops there if it raises.
    """

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult: ...

    async def verify(self) -> None:
        """Prove the settings work (connect and log in, or get a token) without sending."""

    async def aclose(self) -> None: ...


# Refusals of a recipient that another attempt may get past.
_FOR_NOW = frozenset(
    {
        FailureKind.TRANSIENT,
        FailureKind.RECIPIENT_LIMIT,
        FailureKind.THROTTLED,
        FailureKind.DAILY_QUOTA,
    }
)


def refused_recipient(address: str, code: int, reply: str) -> RecipientOutcome:
    """A recipient the server refused: deferred when the refusal is for now, else failed."""
    kind = classify(SmtpReply(code, "rcpt", reply))
    state = RecipientState.DEFERRED if kind in _FOR_NOW else RecipientState.FAILED
    return RecipientOutcome(address, state, code, reply)
