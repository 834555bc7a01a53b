"""An in-memory transport that keeps what it is given, for testing the core without a server.

Like httpx's ``MockTransport``: the test decides each send's verdict with a handler, and
reads back what was sent::

    transport = MemoryTransport(lambda message, recipients: {"b@example.com": 550})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState
from worker.transports.base import BeforeData, SendResult, go_ahead, refused_recipient

__all__ = ["MemoryTransport", "SendHandler", "SentMessage", "accept_all"]

# Decides one send: returns per-recipient refusals (address -> SMTP-style code; 4xx for now,
# 5xx for good), or raises a DeliveryError for the whole message.
SendHandler = Callable[[OutgoingMessage, Sequence[str]], Mapping[str, int]]


def accept_all(message: OutgoingMessage, recipients: Sequence[str]) -> Mapping[str, int]:
    """The default handler: every recipient accepted."""
    return {}


@dataclass(frozen=True, slots=True)
class SentMessage:
    message: OutgoingMessage
    recipients: tuple[str, ...]
    date: float


class MemoryTransport:
    """Keeps every message it accepted in ``sent``; ``handler`` decides each verdict."""

    def __init__(self, handler: SendHandler = accept_all) -> None:
        self.handler = handler
        self.sent: list[SentMessage] = []
        self.calls = 0
        self.closed = False

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        self.calls += 1
        before_data()
        refused = self.handler(message, recipients)
        accepted = tuple(r for r in recipients if r not in refused)
        if accepted:
            self.sent.append(SentMessage(message, accepted, date))
        return SendResult(
            tuple(_outcome(address, refused.get(address)) for address in recipients),
            code=250 if accepted else None,
            reply="accepted" if accepted else None,
        )

    async def verify(self) -> None:
        """Always works: there is nothing to connect to."""

    async def aclose(self) -> None:
        self.closed = True


def _outcome(address: str, code: int | None) -> RecipientOutcome:
    if code is None:
        return RecipientOutcome(address, RecipientState.SENT, 250, "accepted")
    return refused_recipient(address, code, "refused by the memory transport")
