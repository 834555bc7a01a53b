"""The last moment an attempt can be held back: an SMTP transaction stops before DATA when
``before_data`` says so (its claim may be lost), and the session stays usable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from config.errors import TransientError
from config.mail_settings import SmtpSettings, TlsMode
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from worker.message import OutgoingMessage
from worker.records import RecipientState
from worker.transports.base import SendResult
from worker.transports.factory import HttpClients, create_transport


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def plain_peer(request: pytest.FixtureRequest) -> Iterator[SmtpPeer]:
    """A plain-text aiosmtpd server without AUTH, with and without PIPELINING (RFC 2920):
    every test here holds for both."""
    with smtp_peer(pipelining=request.param) as peer:
        yield peer


def message(*to: str) -> OutgoingMessage:
    return OutgoingMessage(message_id="<m1@outbox.test>", to=to, subject="Run results", text="x")


def send(
    outbox_context: OutboxContext,
    peer: SmtpPeer,
    stops: list[bool],
    *to: str,
    per_message: int | None = None,
) -> list[SendResult | TransientError]:
    """Send ``message(*to)`` twice on one transport; the ``before_data`` of each transaction
    stops it when the next of ``stops`` is True."""
    settings = SmtpSettings(
        server=peer.host,
        port=peer.port,
        from_mailbox="robot@example.com",
        tls=TlsMode.NONE,
        max_recipients_per_message=per_message,
    )

    def before_data() -> None:
        if stops.pop(0):
            raise TransientError("not sent: its claim was lost to another process")

    async def run() -> list[SendResult | TransientError]:
        options = outbox_context.transport_options
        http = HttpClients.build(options)
        transport = create_transport(settings, options, http)
        outcomes: list[SendResult | TransientError] = []
        try:
            for _ in range(2):
                try:
                    outcomes.append(await transport.send(message(*to), to, 0.0, before_data))
                except TransientError as stopped:
                    outcomes.append(stopped)
        finally:
            await transport.aclose()
            await http.aclose()
        return outcomes

    return asyncio.run(run())


def test_a_transaction_held_back_sends_nothing_and_the_session_goes_on(
    outbox_context: OutboxContext, plain_peer: SmtpPeer
) -> None:
    held, sent = send(outbox_context, plain_peer, [True, False], "alice@example.com")
    assert isinstance(held, TransientError)
    assert str(held) == "not sent: its claim was lost to another process"
    assert isinstance(sent, SendResult)
    [received] = plain_peer.wait_for_messages(1)
    assert tuple(received.rcpt_tos) == ("alice@example.com",)
    assert plain_peer.connections == 1  # the envelope was reset, the session reused


def test_held_back_after_a_first_transaction_the_rest_are_deferred(
    outbox_context: OutboxContext, plain_peer: SmtpPeer
) -> None:
    result, _ = send(
        outbox_context,
        plain_peer,
        [False, True, False, False],
        "alice@example.com",
        "bob@example.com",
        per_message=1,
    )
    assert isinstance(result, SendResult)
    states = {r.address: r.status for r in result.recipients}
    assert states == {
        "alice@example.com": RecipientState.SENT,
        "bob@example.com": RecipientState.DEFERRED,
    }
    # alice alone in the first send; alice, then bob, in the second
    received = plain_peer.wait_for_messages(3)
    assert [tuple(m.rcpt_tos) for m in received] == [
        ("alice@example.com",),
        ("alice@example.com",),
        ("bob@example.com",),
    ]
