"""The ``redirect`` delivery mode: every message goes to the redirect addresses only, through
the real transport."""

from __future__ import annotations

from collections.abc import Sequence

from worker.message import OutgoingMessage
from worker.redirect import original_outcomes, redirected_message
from worker.transports.base import BeforeData, SendResult, Transport, go_ahead

__all__ = ["RedirectTransport"]


class RedirectTransport:
    """Wraps the settings' transport: sends to ``redirect_to`` what was meant for others, and
    answers for the original recipients (see ``worker.redirect``)."""

    def __init__(self, inner: Transport, redirect_to: tuple[str, ...]) -> None:
        self._inner = inner
        self._redirect_to = redirect_to

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        sent = await self._inner.send(
            redirected_message(message, self._redirect_to), self._redirect_to, date, before_data
        )
        return SendResult(
            original_outcomes(recipients, sent.recipients),
            code=sent.code,
            reply=sent.reply,
            quota=sent.quota,
        )

    async def verify(self) -> None:
        """The real server or Graph, as in deliver: redirect sends through it."""
        await self._inner.verify()

    async def aclose(self) -> None:
        await self._inner.aclose()
