"""Every address form SMTP submission allows, sent to a real aiosmtpd server and read back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import configure, enqueue, parse
from worker.records import RecipientState


@pytest.fixture
def utf8_peer() -> Iterator[SmtpPeer]:
    with smtp_peer(smtputf8=True) as peer:
        yield peer


@pytest.mark.parametrize(
    ("given", "on_the_wire"),
    [
        ("ops@corp.local", "ops@corp.local"),
        ("ops@mailhub", "ops@mailhub"),
        ("root@localhost", "root@localhost"),
        ("ops@[10.0.0.5]", "ops@[10.0.0.5]"),
        ("ops@[IPv6:::1]", "ops@[IPv6:::1]"),
        ("ops@bücher.example", "ops@xn--bcher-kva.example"),
    ],
)
def test_intranet_literal_and_idn_recipients_are_delivered(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
    given: str,
    on_the_wire: str,
) -> None:
    configure(outbox_context, plain_peer, from_mailbox="robot@corp.local")
    delivery_id = enqueue(producer, to=[given])
    assert worker.deliver(delivery_id) == ["sent"]
    [received] = plain_peer.wait_for_messages(1)
    assert (received.mail_from, received.rcpt_tos) == ("robot@corp.local", (on_the_wire,))
    assert parse(received.data)["To"] == on_the_wire


def test_a_non_ascii_local_part_goes_with_smtputf8_when_offered(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, utf8_peer: SmtpPeer
) -> None:
    configure(outbox_context, utf8_peer)
    delivery_id = enqueue(producer, to=["jörg@example.com"], subject="Grüße")
    assert worker.deliver(delivery_id) == ["sent"]
    [received] = utf8_peer.wait_for_messages(1)
    assert received.rcpt_tos == ("jörg@example.com",)
    mime = parse(received.data)
    assert (mime["To"], mime["Subject"]) == ("jörg@example.com", "Grüße")
    assert b"To: j\xc3\xb6rg@example.com" in received.data  # UTF-8 as it is, not encoded words


def test_without_smtputf8_only_the_non_ascii_recipient_fails_with_the_reason(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    delivery_id = enqueue(producer, to=["alice@example.com", "jörg@example.com"])
    assert worker.deliver(delivery_id) == ["partially_sent"]
    [received] = plain_peer.wait_for_messages(1)
    assert received.rcpt_tos == ("alice@example.com",)
    assert received.data.isascii()
    record = outbox_context.deliveries.get(delivery_id)
    jorg = next(r for r in record.recipients if r.address == "jörg@example.com")
    assert jorg.status is RecipientState.FAILED
    assert "does not offer SMTPUTF8" in (jorg.reply or "")


def test_without_smtputf8_a_lone_non_ascii_recipient_fails_without_retries(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    delivery_id = enqueue(producer, to=["jörg@example.com"])
    assert worker.deliver(delivery_id) == ["failed"]
    assert "SMTPUTF8" in (outbox_context.deliveries.get(delivery_id).last_error or "")
    assert plain_peer.messages == []


def test_a_non_ascii_from_mailbox_needs_smtputf8(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer, from_mailbox="büro@example.com")
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    reason = outbox_context.deliveries.get(delivery_id).last_error or ""
    assert "from mailbox büro@example.com" in reason
    assert plain_peer.messages == []
