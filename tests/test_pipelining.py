"""ESMTP PIPELINING (RFC 2920) against aiosmtpd servers that offer it: one write per
transaction's commands, every reply handled as without it, and the session kept usable."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import trustme
import uvloop
from pydantic import SecretStr

from config.errors import DeliveryError, PermanentError, TransientError
from config.mail_settings import SmtpSettings, TlsMode
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.support.smtp_delivery import parse
from worker.message import OutgoingMessage
from worker.records import RecipientState
from worker.tls import TlsContexts
from worker.transports.base import BeforeData, SendResult, go_ahead
from worker.transports.smtp import SmtpTransport
from worker.transports.smtp.session import SessionOptions

USER, PASSWORD = "robot", "correct horse battery staple"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"

Loop = Callable[[], asyncio.AbstractEventLoop]
# The worker runs on uvloop; asyncio's own loop is the fallback where uvloop is missing.
LOOPS: dict[str, Loop] = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer(pipelining=True) as peer:
        yield peer


def message(text: str = "All green.", subject: str = "Run results") -> OutgoingMessage:
    return OutgoingMessage(message_id="<m1@outbox.test>", to=(ALICE,), subject=subject, text=text)


def transport_for(
    peer: SmtpPeer, contexts: TlsContexts | None = None, timeout: float = 5.0, **settings: Any
) -> SmtpTransport:
    fields: dict[str, Any] = {
        "server": peer.host,
        "port": peer.port,
        "from_mailbox": "robot@example.com",
        "tls": TlsMode.NONE,
        **settings,
    }
    default = ssl.create_default_context()
    contexts = contexts or TlsContexts(default, default)
    return SmtpTransport(
        SmtpSettings.model_validate(fields),
        SessionOptions(contexts, timeout=timeout, local_hostname="outbox.test"),
        max_connections=1,
    )


Send = Callable[..., Coroutine[Any, Any, SendResult]]
MESSAGE = message()


def sending(
    transport: SmtpTransport,
    body: Callable[[Send], Coroutine[Any, Any, None]],
    loop: Loop = uvloop.new_event_loop,
) -> None:
    """Run ``body`` with a ``send(*recipients, message=..., before_data=...)`` on
    ``transport``, on ``loop``, closing the transport after."""

    async def send(
        *recipients: str, message: OutgoingMessage = MESSAGE, before_data: BeforeData = go_ahead
    ) -> SendResult:
        return await transport.send(message, recipients, 0.0, before_data)

    async def run() -> None:
        try:
            await body(send)
        finally:
            await transport.aclose()

    with asyncio.Runner(loop_factory=loop) as runner:
        runner.run(run())


def states(result: SendResult) -> dict[str, RecipientState]:
    return {r.address: r.status for r in result.recipients}


def test_a_transaction_is_one_write_of_mail_every_rcpt_and_data(peer: SmtpPeer) -> None:
    async def body(send: Send) -> None:
        result = await send(ALICE, BOB, CAROL)
        assert set(states(result).values()) == {RecipientState.SENT}
        assert result.code == 250

    sending(transport_for(peer), body)
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == (ALICE, BOB, CAROL)
    assert peer.transaction_chunks == [["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]]


def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    with smtp_peer() as plain:

        async def body(send: Send) -> None:
            assert set(states(await send(ALICE, BOB)).values()) == {RecipientState.SENT}

        sending(transport_for(plain), body)
        plain.wait_for_messages(1)
        assert plain.transaction_chunks == [["MAIL"]]


def test_refusals_in_the_middle_of_the_group_fail_only_those_recipients(peer: SmtpPeer) -> None:
    peer.rcpt_replies[BOB] = "550 5.1.1 No such user"
    peer.rcpt_replies[CAROL] = "451 4.3.0 Try again later"

    async def body(send: Send) -> None:
        result = await send(ALICE, BOB, CAROL)
        assert states(result) == {
            ALICE: RecipientState.SENT,
            BOB: RecipientState.FAILED,
            CAROL: RecipientState.DEFERRED,
        }
        [bob] = [r for r in result.recipients if r.address == BOB]
        assert (bob.code, bob.reply) == (550, "5.1.1 No such user")
        # The session goes on: the next message on the same connection.
        peer.rcpt_replies.clear()
        assert states(await send(CAROL, message=message(subject="next"))) == {
            CAROL: RecipientState.SENT
        }

    sending(transport_for(peer), body)
    first, second = peer.wait_for_messages(2)
    assert (first.rcpt_tos, second.rcpt_tos) == ((ALICE,), (CAROL,))
    assert parse(second.data)["Subject"] == "next"
    assert peer.connections == 1


def test_a_refused_sender_refuses_the_message_and_keeps_the_session(peer: SmtpPeer) -> None:
    peer.mail_replies.append("553 5.7.1 Sender address rejected")

    async def body(send: Send) -> None:
        with pytest.raises(PermanentError) as refused:
            await send(ALICE, BOB)
        assert refused.value.code == 553
        assert "Sender address rejected" in str(refused.value)
        assert set(states(await send(ALICE)).values()) == {RecipientState.SENT}

    sending(transport_for(peer), body)
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == (ALICE,)
    assert peer.connections == 1


def test_every_recipient_refused_sends_no_message(peer: SmtpPeer) -> None:
    peer.rcpt_replies[ALICE] = "550 5.1.1 No such user"
    peer.rcpt_replies[BOB] = "550 5.1.1 No such user"

    async def body(send: Send) -> None:
        assert set(states(await send(ALICE, BOB)).values()) == {RecipientState.FAILED}
        assert set(states(await send(CAROL)).values()) == {RecipientState.SENT}

    sending(transport_for(peer), body)
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == (CAROL,)  # DATA was refused (503), no body went out
    assert peer.connections == 1


def test_the_message_refused_after_data_is_the_servers_reply(peer: SmtpPeer) -> None:
    peer.data_replies.append("554 5.6.0 Message refused")

    async def body(send: Send) -> None:
        with pytest.raises(PermanentError) as refused:
            await send(ALICE)
        assert refused.value.code == 554
        assert set(states(await send(ALICE)).values()) == {RecipientState.SENT}

    sending(transport_for(peer), body)
    assert len(peer.wait_for_messages(1)) == 1
    assert peer.connections == 1


def test_a_server_closing_in_the_middle_of_the_group_defers_the_message(peer: SmtpPeer) -> None:
    peer.drop_at_rcpt.add(BOB)

    async def body(send: Send) -> None:
        with pytest.raises(TransientError):
            await send(ALICE, BOB, CAROL)
        peer.drop_at_rcpt.clear()
        # A new session for the next message: the lost one was closed, not reused.
        assert set(states(await send(ALICE, BOB)).values()) == {RecipientState.SENT}

    sending(transport_for(peer), body)
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == (ALICE, BOB)


def test_held_back_before_the_group_nothing_is_written(peer: SmtpPeer) -> None:
    def held_back() -> None:
        raise TransientError("not sent: its claim was lost to another process")

    async def body(send: Send) -> None:
        await send(ALICE)
        with pytest.raises(TransientError):
            await send(BOB, before_data=held_back)
        await send(CAROL)

    sending(transport_for(peer), body)
    received = peer.wait_for_messages(2)
    assert [m.rcpt_tos for m in received] == [(ALICE,), (CAROL,)]
    assert len(peer.transaction_chunks) == 2
    assert peer.connections == 1


def test_lines_that_begin_with_a_period_arrive_intact(peer: SmtpPeer) -> None:
    text = ".\n..two\n.three\nlast line without an end"

    async def body(send: Send) -> None:
        await send(ALICE, message=message(text=text))

    sending(transport_for(peer), body)
    [received] = peer.wait_for_messages(1)
    assert parse(received.data).get_content().rstrip("\n") == text


@pytest.mark.parametrize("loop", LOOPS.values(), ids=LOOPS.keys())
def test_pipelining_after_starttls_and_login(
    loop: Loop,
    certificate_authority: trustme.CA,
    server_certificate: trustme.LeafCert,
    client_tls_context: ssl.SSLContext,
) -> None:
    with smtp_peer(
        tls="starttls",
        certificate=server_certificate,
        credentials={USER: PASSWORD},
        pipelining=True,
    ) as tls_peer:
        transport = transport_for(
            tls_peer,
            TlsContexts(client_tls_context, client_tls_context),
            server="localhost",
            tls=TlsMode.STARTTLS,
            username=USER,
            password=SecretStr(PASSWORD),
        )

        async def body(send: Send) -> None:
            for subject in ("one", "two", "three"):
                result = await send(ALICE, BOB, message=message(subject=subject))
                assert set(states(result).values()) == {RecipientState.SENT}

        sending(transport, body, loop)
        received = tls_peer.wait_for_messages(3)
        assert [parse(m.data)["Subject"] for m in received] == ["one", "two", "three"]
        assert tls_peer.transaction_chunks == [["MAIL", "RCPT", "RCPT", "DATA"]] * 3
        assert tls_peer.connections == 1


def test_a_slow_reply_times_out_as_a_transient_failure(peer: SmtpPeer) -> None:
    peer.data_delay_seconds = 1.0

    async def body(send: Send) -> None:
        with pytest.raises(DeliveryError) as timed_out:
            await send(ALICE)
        assert isinstance(timed_out.value, TransientError)
        # The late reply is never taken for the next command's: that session was closed.
        peer.data_delay_seconds = 0.0
        await asyncio.sleep(1.0)
        assert set(states(await send(BOB)).values()) == {RecipientState.SENT}

    sending(transport_for(peer, timeout=0.3), body)
    assert peer.connections == 2
