"""The ``capture`` delivery mode: the MIME message is built and kept, and nothing is sent."""

from __future__ import annotations

from collections.abc import Sequence

from config.addresses import needs_smtputf8
from worker.message import OutgoingMessage
from worker.mime import build_mime
from worker.records import RecipientOutcome, RecipientState
from worker.transports.base import BeforeData, SendResult, Transport, go_ahead

__all__ = ["CAPTURED_REPLY", "CaptureTransport"]

CAPTURED_REPLY = "captured, not sent (delivery mode capture)"


class CaptureTransport:
    """Wraps the settings' transport without sending through it: ``send`` answers every
    recipient ``captured`` with the message as SMTP would have sent it; ``verify`` still
    checks the real server or Graph, so that switching to deliver holds no surprise."""

    def __init__(self, inner: Transport, sender: str) -> None:
        self._inner = inner
        self._sender = sender

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        before_data()  # a claim lost meanwhile records nothing, as a real send would not
        # As a server offering SMTPUTF8 would get it when an address needs it.
        addresses = (self._sender, *message.recipients, *message.reply_to)
        mime = build_mime(message, self._sender, date, utf8=any(map(needs_smtputf8, addresses)))
        return SendResult(
            tuple(
                RecipientOutcome(address, RecipientState.CAPTURED, None, CAPTURED_REPLY)
                for address in recipients
            ),
            reply=CAPTURED_REPLY,
            captured=mime,
        )

    async def verify(self) -> None:
        await self._inner.verify()

    async def aclose(self) -> None:
        await self._inner.aclose()
