"""A transport that keeps messages in memory, with scripted failures, for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.errors import DeliveryError
from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState
from worker.transports.base import SendResult


@dataclass(slots=True)
class SentMessage:
    message: OutgoingMessage
    recipients: tuple[str, ...]


@dataclass(slots=True)
class MemoryTransport:
    """Accepts every recipient except those in ``refusals``; raises queued ``failures`` first."""

    sent: list[SentMessage] = field(default_factory=list)
    failures: list[DeliveryError] = field(default_factory=list)
    refusals: dict[str, RecipientOutcome] = field(default_factory=dict)
    closed: bool = False

    async def send(
        self, message: OutgoingMessage, recipients: Sequence[str], date: float
    ) -> SendResult:
        if self.failures:
            raise self.failures.pop(0)
        accepted = tuple(r for r in recipients if r not in self.refusals)
        if accepted:
            self.sent.append(SentMessage(message, accepted))
        outcomes = (
            self.refusals.get(r, RecipientOutcome(r, RecipientState.SENT)) for r in recipients
        )
        return SendResult(tuple(outcomes))

    async def verify(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def aclose(self) -> None:
        self.closed = True
