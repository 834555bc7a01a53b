"""A capped pool of logged-in SMTP sessions, kept open and reused across messages."""

from __future__ import annotations

import asyncio
import contextlib

import aiosmtplib

from worker.transports.smtp.session import SessionOpener, quit_session

__all__ = ["SessionPool"]


class SessionPool:
    """Up to ``max_connections`` sessions in use at once; those given back are kept for the
    next message until the pool is closed."""

    def __init__(self, opener: SessionOpener, max_connections: int) -> None:
        self._opener = opener
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[aiosmtplib.SMTP] = []
        self._closed = False

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while a message is sent: its sessions, kept or new, count against the cap."""
        return self._slots

    async def checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle session that is still connected, else a new one; and whether it was kept."""
        while self._idle:
            connection = self._idle.pop()
            if connection.is_connected:
                return connection, True
        return await self.open(), False

    async def open(self) -> aiosmtplib.SMTP:
        """A new session, not taken from the idle ones."""
        return await self._opener.open()

    async def release(self, connection: aiosmtplib.SMTP) -> None:
        """Keep ``connection`` for the next message."""
        if not self._closed:
            self._idle.append(connection)
            return
        # Retired while this send was in flight (the settings changed): do not keep it.
        await quit_session(connection)

    async def aclose(self) -> None:
        """Quit the idle sessions; those in use quit when they are given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await quit_session(connection)
