"""outbox's SMTP client against a real Exim: envelopes, refusals amid a pipelined group, and
PIPELINING (RFC 2920) used where offered and not where not, as Exim's main log records it."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.mail_settings import SmtpSettings, TlsMode
from peers.exim import DEFERRED_PREFIX, REFUSED_PREFIX, EximServer, running_exim
from worker.message import OutgoingMessage
from worker.records import RecipientOutcome, RecipientState
from worker.tls import build_tls_contexts
from worker.transports.base import SendResult
from worker.transports.smtp import SessionOptions, SmtpTransport

FROM = "robot@example.com"
REFUSED = f"{REFUSED_PREFIX}-bob@example.com"  # 550 at RCPT
DEFERRED = f"{DEFERRED_PREFIX}-carol@example.org"  # 451 at RCPT
# The client's port and the pipelining field of Exim's "<=" line: "L" used, "L-" offered and
# not used, none when PIPELINING was not offered.
ACCEPT_LINE = re.compile(r" \[127\.0\.0\.1\]:(?P<port>\d+) P=esmtp (?:(?P<field>L-?) )?S=")


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def any_exim(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EximServer]:
    """Exim offering PIPELINING, and Exim not offering it: then its smtp_enforce_sync drops a
    client that sends a command before the reply to the one before."""
    with running_exim(tmp_path, pipelining=request.param) as server:
        yield server


@pytest.fixture
def exim(tmp_path: Path) -> Iterator[EximServer]:
    with running_exim(tmp_path) as server:
        yield server


def message(number: int, *to: str) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=f"<exim-{number}@outbox.test>",
        to=to,
        subject=f"Run results {number}",
        text=f"All green, run {number}.",
    )


def send(exim: EximServer, *messages: OutgoingMessage) -> list[SendResult]:
    """Send each message to its recipients, one after the other on one transport (of one
    connection at most, so a later message goes on the session of an earlier one)."""
    settings = SmtpSettings(server=exim.host, port=exim.port, from_mailbox=FROM, tls=TlsMode.NONE)
    options = SessionOptions(tls=build_tls_contexts(), timeout=10, local_hostname="outbox.test")

    async def run() -> list[SendResult]:
        transport = SmtpTransport(settings, options, max_connections=1)
        try:
            return [await transport.send(m, m.recipients, time.time()) for m in messages]
        finally:
            await transport.aclose()

    return asyncio.run(run())


def states(result: SendResult) -> dict[str, RecipientState]:
    return {outcome.address: outcome.status for outcome in result.recipients}


def accept_fields(exim: EximServer, exim_id: str) -> tuple[str | None, str]:
    """The pipelining field and the client's port on the "<=" line of message ``exim_id``."""
    line = exim.accept_line(exim_id)
    found = ACCEPT_LINE.search(line)
    assert found is not None, line
    return found["field"], found["port"]


def test_a_message_to_two_recipients_arrives_with_both(any_exim: EximServer) -> None:
    [result] = send(any_exim, message(1, "alice@example.com", "bob@example.net"))

    assert states(result) == {
        "alice@example.com": RecipientState.SENT,
        "bob@example.net": RecipientState.SENT,
    }
    [accepted] = any_exim.wait_for_messages(1)
    assert accepted.mail_from == FROM
    assert accepted.recipients == ("alice@example.com", "bob@example.net")
    parsed = accepted.parsed()
    assert parsed["Message-ID"] == "<exim-1@outbox.test>"
    assert parsed["Subject"] == "Run results 1"
    assert (parsed["From"], parsed["To"]) == (FROM, "alice@example.com, bob@example.net")
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "All green, run 1."


def test_refusals_amid_the_recipients_leave_the_session_usable(any_exim: EximServer) -> None:
    first, second = send(
        any_exim,
        message(1, "alice@example.com", REFUSED, DEFERRED, "dave@example.net"),
        message(2, "erin@example.com"),
    )

    assert first.recipients == (
        RecipientOutcome("alice@example.com", RecipientState.SENT, 250, "accepted"),
        RecipientOutcome(
            REFUSED, RecipientState.FAILED, 550, "5.1.1 refused by the test configuration"
        ),
        RecipientOutcome(
            DEFERRED, RecipientState.DEFERRED, 451, "4.2.0 deferred by the test configuration"
        ),
        RecipientOutcome("dave@example.net", RecipientState.SENT, 250, "accepted"),
    )
    assert states(second) == {"erin@example.com": RecipientState.SENT}
    accepted = any_exim.wait_for_messages(2)
    assert [(m.parsed()["Message-ID"], m.recipients) for m in accepted] == [
        ("<exim-1@outbox.test>", ("alice@example.com", "dave@example.net")),
        ("<exim-2@outbox.test>", ("erin@example.com",)),
    ]
    # Both went on one connection: the client's port is the same on both "<=" lines.
    [(_, port_1), (_, port_2)] = [accept_fields(any_exim, m.exim_id) for m in accepted]
    assert port_1 == port_2
    assert "synchronization error" not in any_exim.main_log()


def test_the_client_pipelines_where_exim_offers_it(any_exim: EximServer) -> None:
    send(any_exim, message(1, "alice@example.com", REFUSED, "bob@example.net"))

    [accepted] = any_exim.wait_for_messages(1)
    field, _ = accept_fields(any_exim, accepted.exim_id)
    assert field == ("L" if any_exim.pipelining else None), any_exim.accept_line(accepted.exim_id)


# --- the peer itself: what its log says of a client that pipelines and of one that doesn't --


def raw_send(exim: EximServer, *, pipelined: bool) -> list[str]:
    """After EHLO, MAIL, RCPT and DATA in one write (pipelined) or each after the reply to the
    one before; the replies to them, then (if DATA was accepted) to the message's end."""
    commands = [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"]
    with socket.create_connection((exim.host, exim.port), timeout=5) as sock:
        lines = sock.makefile("rb")

        def reply() -> str:
            while (line := lines.readline().decode()) and line[3:4] == "-":
                pass
            return line.strip()

        reply()  # the greeting
        sock.sendall(b"EHLO raw.test\r\n")
        reply()
        if pipelined:
            sock.sendall(b"".join(commands))
            replies = [reply() for _ in commands]  # "" for each after a refusal that drops
        else:
            replies = []
            for command in commands:
                sock.sendall(command)
                replies.append(reply())
        if replies[-1].startswith("354"):
            sock.sendall(b"Subject: raw\r\n\r\nraw\r\n.\r\n")
            replies.append(reply())
            sock.sendall(b"QUIT\r\n")
            reply()
    return replies


@pytest.mark.parametrize(("pipelined", "field"), [(True, "L"), (False, "L-")])
def test_the_log_tells_a_client_that_pipelines_from_one_that_does_not(
    exim: EximServer, pipelined: bool, field: str
) -> None:
    *envelope, done = raw_send(exim, pipelined=pipelined)
    assert [reply[:3] for reply in envelope] == ["250", "250", "354"]
    assert done.startswith("250 OK id=")
    assert accept_fields(exim, done.removeprefix("250 OK id="))[0] == field


def test_without_pipelining_offered_exim_drops_a_client_that_pipelines(tmp_path: Path) -> None:
    with running_exim(tmp_path, pipelining=False) as exim:
        assert raw_send(exim, pipelined=True)[0] == "554 SMTP synchronization error"
        assert "next input sent too soon: pipelining was not advertised" in exim.main_log()
        assert raw_send(exim, pipelined=False)[-1].startswith("250 OK id=")
