"""Self-tests proving peers/smtp_peer.py behaves like a real SMTP server."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Coroutine
from typing import Any, TypedDict, TypeVar, Unpack

import aiosmtplib
import pytest
import trustme

from peers.smtp_peer import ReceivedMessage, SmtpPeer, smtp_peer

T = TypeVar("T")

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n"
    b"Hello \xc3\xa9\r\n.leading dot\r\n"
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() that gives closing TLS connections time to finish."""

    async def settled() -> T:
        try:
            return await coro
        finally:
            # aiosmtplib's close() returns before the TLS close_notify exchange
            # is over; closing the loop right away leaks the socket
            # (ResourceWarning, fatal under -W error).
            await asyncio.sleep(0.05)

    return asyncio.run(settled())


class ClientOptions(TypedDict, total=False):
    """The options of an ``aiosmtplib.SMTP`` client that a test may set."""

    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool | None
    tls_context: ssl.SSLContext | None


def client(peer: SmtpPeer, **kwargs: Unpack[ClientOptions]) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname=peer.host, port=peer.port, timeout=5, **kwargs)


async def send(
    peer: SmtpPeer,
    recipients: list[str] | None = None,
    message: bytes = MESSAGE,
    **kwargs: Unpack[ClientOptions],
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    async with client(peer, **kwargs) as smtp:
        return await smtp.sendmail("a@example.com", recipients or ["b@example.com"], message)


def test_plain_send_is_recorded_with_its_bytes() -> None:
    with smtp_peer() as peer:
        errors, reply = run(send(peer, ["b@example.com", "c@example.com"]))
        assert errors == {}
        assert reply == "OK"
        [msg] = peer.wait_for_messages(1)
    assert msg == ReceivedMessage(
        mail_from="a@example.com",
        rcpt_tos=("b@example.com", "c@example.com"),
        # Dot-unstuffed and with the final CRLF, exactly as the client passed it.
        data=MESSAGE,
        mail_options=(f"SIZE={len(MESSAGE)}",),
    )
    assert peer.connections == 1


def test_starttls_with_auth(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={"user": "secret"}
    ) as peer:

        async def go() -> tuple[bool, list[str]]:
            async with client(
                peer, tls_context=client_tls_context, username="user", password="secret"
            ) as smtp:
                assert smtp.get_transport_info("sslcontext") is not None
                await smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)
                return smtp.supports_extension("starttls"), smtp.server_auth_methods

        still_offers_starttls, auth_methods = run(go())
        assert not still_offers_starttls
        assert set(auth_methods) >= {"plain", "login"}
        assert len(peer.wait_for_messages(1)) == 1
        assert peer.connections == 1


def test_starttls_refuses_mail_before_tls(server_certificate: trustme.LeafCert) -> None:
    with smtp_peer(tls="starttls", certificate=server_certificate) as peer:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as excinfo:
            run(send(peer, start_tls=False))
        assert excinfo.value.code == 530


def test_auth_is_required(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    with smtp_peer(credentials={"user": "secret"}) as peer:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as excinfo:
            run(send(peer))
        assert excinfo.value.code == 530
        # LOGIN works over plain text when no TLS is configured.
        run(send(peer, username="user", password="secret"))
        assert len(peer.wait_for_messages(1)) == 1


def test_implicit_tls(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    peer = smtp_peer(tls="implicit", certificate=server_certificate, credentials={"user": "secret"})
    with peer:
        run(
            send(
                peer,
                use_tls=True,
                tls_context=client_tls_context,
                username="user",
                password="secret",
            )
        )
        assert len(peer.wait_for_messages(1)) == 1
        assert peer.connections == 1


def test_wrong_password_is_535(
    server_certificate: trustme.LeafCert, client_tls_context: ssl.SSLContext
) -> None:
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={"user": "secret"}
    ) as peer:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as excinfo:
            run(send(peer, tls_context=client_tls_context, username="user", password="nope"))
        assert excinfo.value.code == 535
        assert excinfo.value.message == "5.7.8 Authentication credentials invalid"
        assert peer.messages == []


def test_rcpt_replies_reject_one_recipient() -> None:
    with smtp_peer() as peer:
        peer.rcpt_replies["bad@example.com"] = "550 5.1.1 No such user"
        errors, _ = run(send(peer, ["good@example.com", "bad@example.com"]))
        assert errors == {"bad@example.com": aiosmtplib.SMTPResponse(550, "5.1.1 No such user")}
        [msg] = peer.wait_for_messages(1)
        assert msg.rcpt_tos == ("good@example.com",)


def test_rcpt_replies_reject_all_recipients() -> None:
    with smtp_peer() as peer:
        peer.rcpt_replies["bad@example.com"] = "451 4.3.0 Try later"
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as excinfo:
            run(send(peer, ["bad@example.com"]))
        [refused] = excinfo.value.recipients
        assert (refused.code, refused.message) == (451, "4.3.0 Try later")


def test_data_replies_fail_once_then_succeed() -> None:
    with smtp_peer() as peer:
        peer.data_replies.append("451 4.3.0 Busy")
        with pytest.raises(aiosmtplib.SMTPDataError) as excinfo:
            run(send(peer))
        assert (excinfo.value.code, excinfo.value.message) == (451, "4.3.0 Busy")
        assert peer.messages == []
        run(send(peer))
        assert len(peer.wait_for_messages(1)) == 1
        assert peer.data_replies == []


def test_two_messages_over_one_connection() -> None:
    with smtp_peer() as peer:

        async def go() -> None:
            async with client(peer) as smtp:
                await smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE)
                await smtp.sendmail("a@example.com", ["c@example.com"], MESSAGE)

        run(go())
        assert len(peer.wait_for_messages(2)) == 2
        assert peer.connections == 1


def test_stop_then_start_on_same_port() -> None:
    with smtp_peer() as peer:
        port = peer.port
        run(send(peer))
        peer.stop()
        with pytest.raises(aiosmtplib.SMTPConnectError):
            run(send(peer))
        peer.start()
        assert peer.port == port
        run(send(peer))
        assert len(peer.wait_for_messages(2)) == 2
        assert peer.connections == 2


def test_stop_with_a_connected_client() -> None:
    with smtp_peer() as peer:

        async def go() -> None:
            async with client(peer) as smtp:
                await smtp.noop()
                await asyncio.to_thread(peer.stop)
                with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                    await smtp.noop()

        run(go())
        # The port is really free again.
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((peer.host, peer.port))


def test_drop_next_connection() -> None:
    with smtp_peer() as peer:
        peer.drop_next_connections = 1
        with pytest.raises(aiosmtplib.SMTPConnectError):
            run(send(peer))
        assert peer.drop_next_connections == 0
        run(send(peer))
        assert len(peer.wait_for_messages(1)) == 1
        assert peer.connections == 2


def test_drop_with_implicit_tls(
    server_certificate: trustme.LeafCert,
    client_tls_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with smtp_peer(tls="implicit", certificate=server_certificate) as peer:
        peer.drop_next_connections = 1
        with pytest.raises(aiosmtplib.SMTPConnectError):
            run(send(peer, use_tls=True, tls_context=client_tls_context))
        run(send(peer, use_tls=True, tls_context=client_tls_context))
        assert len(peer.wait_for_messages(1)) == 1
        assert peer.connections == 2
    # The server thread must not log errors (e.g. from eof_received) for the drop.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_data_delay_causes_client_timeout() -> None:
    with smtp_peer() as peer:
        peer.data_delay_seconds = 1.0

        async def go() -> None:
            async with client(peer) as smtp:
                await smtp.sendmail("a@example.com", ["b@example.com"], MESSAGE, timeout=0.2)

        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            run(go())


def test_wait_for_messages_reports_what_arrived() -> None:
    with smtp_peer() as peer:
        run(send(peer))
        with pytest.raises(AssertionError, match="got 1"):
            peer.wait_for_messages(2, timeout=0.2)


def test_certificate_required_for_tls() -> None:
    with pytest.raises(ValueError, match="certificate"):
        smtp_peer(tls="starttls")
