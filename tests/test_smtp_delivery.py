"""SMTP delivery through the real worker runtime, real Redis and real aiosmtpd servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
import trustme
from cryptography.fernet import Fernet
from pydantic import SecretStr

from config.mail_settings import TlsMode
from peers.smtp_peer import SmtpPeer, smtp_peer
from peers.smtp_peer import TlsMode as PeerTls
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import body_text, configure, enqueue, parse
from worker.records import DeliveryStatus, RecipientState, record_key
from worker.records.codec import as_text

USER, PASSWORD = "robot", "correct horse battery staple"


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def plain_peer(request: pytest.FixtureRequest) -> Iterator[SmtpPeer]:
    """A plain-text aiosmtpd server without AUTH, with and without PIPELINING (RFC 2920):
    every test here holds for both."""
    with smtp_peer(pipelining=request.param) as peer:
        yield peer


def test_plain_delivery_matches_the_message(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    configure(outbox_context, plain_peer)
    delivery_id = enqueue(
        producer,
        cc=["bob@example.com"],
        bcc=["carol@example.com"],
        html="<p>All <b>green</b>.</p>",
        headers={"X-Schedule": "nightly"},
        attachments=[{"name": "log.txt", "content_type": "text/plain", "content": b"ok\n"}],
    )
    assert worker.deliver(delivery_id) == ["sent"]

    [received] = plain_peer.wait_for_messages(1)
    assert received.mail_from == "robot@example.com"
    assert sorted(received.rcpt_tos) == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
    ]
    mime = parse(received.data)
    record = outbox_context.deliveries.get(delivery_id)
    assert mime["Message-ID"] == record.message.message_id
    assert (mime["From"], mime["To"], mime["Cc"]) == (
        "robot@example.com",
        "alice@example.com",
        "bob@example.com",
    )
    assert mime["Bcc"] is None
    assert mime["Subject"] == "Run results"
    assert mime["X-Schedule"] == "nightly"
    assert body_text(mime, "plain").strip() == "All green."
    assert body_text(mime, "html").strip() == "<p>All <b>green</b>.</p>"
    [attachment] = mime.iter_attachments()
    assert (attachment.get_filename(), attachment.get_payload(decode=True)) == ("log.txt", b"ok\n")

    assert record.status is DeliveryStatus.SENT
    assert [r.status for r in record.recipients] == [RecipientState.SENT] * 3
    assert [a.outcome for a in record.attempts] == ["sent"]
    retention = outbox_context.settings.retention_seconds
    assert retention - 60 < redis_client.ttl(record_key(delivery_id)) <= retention


@pytest.mark.parametrize(
    ("peer_tls", "mode"),
    [("starttls", TlsMode.STARTTLS), ("starttls", TlsMode.AUTO), ("implicit", TlsMode.IMPLICIT)],
)
def test_tls_and_login(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    server_certificate: trustme.LeafCert,
    peer_tls: PeerTls,
    mode: TlsMode,
) -> None:
    with smtp_peer(
        tls=peer_tls,
        certificate=server_certificate,
        credentials={USER: PASSWORD},
    ) as peer:
        configure(outbox_context, peer, tls=mode, username=USER, password=SecretStr(PASSWORD))
        delivery_id = enqueue(producer)
        assert worker.deliver(delivery_id) == ["sent"]
        [received] = peer.wait_for_messages(1)
        assert (
            parse(received.data)["Message-ID"]
            == outbox_context.deliveries.get(delivery_id).message.message_id
        )


def test_wrong_password_fails_at_once_with_the_servers_reply(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    server_certificate: trustme.LeafCert,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={USER: PASSWORD}
    ) as peer:
        configure(
            outbox_context,
            peer,
            tls=TlsMode.STARTTLS,
            username=USER,
            password=SecretStr("wrong-pw-123"),
        )
        delivery_id = enqueue(producer)
        assert worker.deliver(delivery_id) == ["failed"]
        assert outbox_context.deliveries.get(delivery_id).next_attempt_at is None  # no retry
        record = outbox_context.deliveries.get(delivery_id)
        assert record.last_error is not None
        assert "535" in record.last_error
        assert [(a.outcome, a.code) for a in record.attempts] == [("configuration", 535)]
        assert peer.messages == []
    assert "wrong-pw-123" not in repr(record) + caplog.text


def test_recipient_550_is_permanent(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.rcpt_replies["alice@example.com"] = "550 5.1.1 No such user"
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    assert outbox_context.deliveries.get(delivery_id).next_attempt_at is None  # no retry
    [recipient] = outbox_context.deliveries.get(delivery_id).recipients
    assert (recipient.status, recipient.code, recipient.reply) == (
        RecipientState.FAILED,
        550,
        "5.1.1 No such user",
    )


def test_refused_envelopes_leave_the_session_usable(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    # Every recipient refused, then the message refused at DATA: each envelope is reset, and
    # the next message goes out on the same connection with the size of what it sends.
    configure(outbox_context, plain_peer)
    plain_peer.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user"
    assert worker.deliver(enqueue(producer, to=["nobody@example.com"])) == ["failed"]
    plain_peer.data_replies.append("554 5.6.0 Message refused")
    assert worker.deliver(enqueue(producer, subject="refused")) == ["failed"]
    assert worker.deliver(enqueue(producer, subject="accepted")) == ["sent"]
    [message] = plain_peer.wait_for_messages(1)
    assert parse(message.data)["Subject"] == "accepted"
    assert f"SIZE={len(message.data)}" in message.mail_options
    assert plain_peer.connections == 1


def test_a_server_that_refuses_ehlo_is_greeted_with_helo(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.ehlo_refused = True
    assert worker.deliver(enqueue(producer)) == ["sent"]
    [message] = plain_peer.wait_for_messages(1)
    assert message.mail_options == ()  # no extensions known after HELO: no SIZE either


def test_451_then_success_is_sent_after_a_retry(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.data_replies.append("451 4.3.0 Try again later")
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["retrying"]
    record = outbox_context.deliveries.get(delivery_id)
    assert record.next_attempt_at is not None
    assert record.last_error is not None
    assert "451" in record.last_error
    delay = record.next_attempt_at - record.updated_at
    assert 0 <= delay <= outbox_context.settings.retry_max_seconds
    assert worker.settle(delivery_id) == "sent"
    record = outbox_context.deliveries.get(delivery_id)
    assert [(a.outcome, a.code) for a in record.attempts] == [("transient", 451), ("sent", 250)]
    assert len(plain_peer.wait_for_messages(1)) == 1


def test_server_down_then_up_is_delivered(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.stop()
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["retrying"]
    assert "refused" in (outbox_context.deliveries.get(delivery_id).last_error or "")
    assert worker.settle(delivery_id, before_retry=plain_peer.start) == "sent"
    assert len(plain_peer.wait_for_messages(1)) == 1


def test_mixed_recipients_are_partially_sent(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.rcpt_replies["ghost@example.com"] = "550 5.1.1 Unknown"
    delivery_id = enqueue(producer, to=["alice@example.com", "ghost@example.com"])
    assert worker.deliver(delivery_id) == ["partially_sent"]
    record = outbox_context.deliveries.get(delivery_id)
    assert {r.address: r.status for r in record.recipients} == {
        "alice@example.com": RecipientState.SENT,
        "ghost@example.com": RecipientState.FAILED,
    }
    assert plain_peer.wait_for_messages(1)[0].rcpt_tos == ("alice@example.com",)


def test_a_deferred_recipient_alone_gets_the_retry(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.rcpt_replies["busy@example.com"] = "452 4.2.2 Mailbox full, try later"
    delivery_id = enqueue(producer, to=["alice@example.com", "busy@example.com"])
    assert worker.deliver(delivery_id) == ["retrying"]
    del plain_peer.rcpt_replies["busy@example.com"]
    assert worker.settle(delivery_id) == "sent"
    first, second = plain_peer.wait_for_messages(2)
    assert (first.rcpt_tos, second.rcpt_tos) == (("alice@example.com",), ("busy@example.com",))
    assert parse(first.data)["Message-ID"] == parse(second.data)["Message-ID"]


def test_attempts_exhausted_is_failed_with_the_last_reason(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    plain_peer.data_replies.extend(["451 4.3.0 Busy"] * 10)
    delivery_id = enqueue(producer)
    assert worker.settle(delivery_id) == "failed"
    record = outbox_context.deliveries.get(delivery_id)
    assert len(record.attempts) == outbox_context.settings.max_attempts
    assert "451" in (record.last_error or "")


def test_self_signed_certificate_refused_unless_accepted(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    untrusted = trustme.CA().issue_cert("localhost", "127.0.0.1")
    with smtp_peer(tls="implicit", certificate=untrusted) as peer:
        configure(outbox_context, peer, tls=TlsMode.IMPLICIT)
        refused_id = enqueue(producer)
        assert worker.deliver(refused_id) == ["failed"]
        refused = outbox_context.deliveries.get(refused_id)
        assert "not trusted" in (refused.last_error or "")
        assert refused.next_attempt_at is None  # no retry

        configure(outbox_context, peer, tls=TlsMode.IMPLICIT, accept_any_certificate=True)
        accepted_id = enqueue(producer)
        with caplog.at_level(logging.WARNING, logger="worker.runtime"):
            assert worker.deliver(accepted_id) == ["sent"]
            assert worker.deliver(enqueue(producer)) == ["sent"]
        assert len(peer.wait_for_messages(2)) == 2
        # Said once for the settings version that weakens it, not once per e-mail.
        [said] = [r for r in caplog.records if "accept any certificate is on" in r.message]
        assert "mail settings version 2" in said.message


def test_a_settings_change_applies_to_the_next_job(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    assert worker.deliver(enqueue(producer)) == ["sent"]
    with smtp_peer() as second:
        configure(outbox_context, second)
        assert worker.deliver(enqueue(producer)) == ["sent"]
        assert len(second.wait_for_messages(1)) == 1
    assert len(plain_peer.messages) == 1


def test_one_connection_serves_many_jobs(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    for _ in range(20):
        assert worker.deliver(enqueue(producer)) == ["sent"]
    assert len(plain_peer.wait_for_messages(20)) == 20
    assert plain_peer.connections == 1


def test_a_chunk_is_sent_concurrently_on_a_capped_pool(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    delivery_ids = [enqueue(producer, subject=f"n{n}") for n in range(40)]
    assert worker.deliver(*delivery_ids) == ["sent"] * 40
    assert len(plain_peer.wait_for_messages(40)) == 40
    assert 1 <= plain_peer.connections <= outbox_context.settings.smtp_max_connections


def test_a_job_reports_each_delivery_in_its_place(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    # Lanes take the ids as they come free, yet the job's result keeps the job's order.
    configure(outbox_context, plain_peer)
    sent_before = enqueue(producer, subject="earlier")
    assert worker.deliver(sent_before) == ["sent"]
    fresh = [enqueue(producer, subject=f"n{n}") for n in range(12)]
    job = [*fresh[:5], sent_before, "0" * 32, *fresh[5:]]
    assert worker.deliver(*job) == ["sent"] * 5 + ["sent", "missing"] + ["sent"] * 7
    assert len(plain_peer.wait_for_messages(13)) == 13
    for delivery_id in fresh:
        record = outbox_context.deliveries.get(delivery_id)
        assert (record.status, len(record.attempts)) == (DeliveryStatus.SENT, 1)


def test_scripts_forgotten_by_redis_are_loaded_again(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    # A Redis restarted without persistence forgets its scripts; a lane records an attempt and
    # claims its next delivery in one pipeline, which must load them again, not fail.
    configure(outbox_context, plain_peer)
    assert worker.deliver(enqueue(producer)) == ["sent"]
    outbox_context.redis.script_flush()
    delivery_ids = [enqueue(producer, subject=f"n{n}") for n in range(20)]
    assert worker.deliver(*delivery_ids) == ["sent"] * 20
    assert len(plain_peer.wait_for_messages(21)) == 21
    assert all(len(outbox_context.deliveries.get(i).attempts) == 1 for i in delivery_ids)


def test_a_sent_delivery_is_never_sent_again(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["sent"]
    assert worker.deliver(delivery_id) == ["sent"]  # a redelivered task message
    assert len(plain_peer.wait_for_messages(1)) == 1
    assert len(outbox_context.deliveries.get(delivery_id).attempts) == 1


def test_server_closing_an_idle_connection_costs_no_retry(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer)
    assert worker.deliver(enqueue(producer)) == ["sent"]
    plain_peer.stop()  # drops the kept-open session
    plain_peer.start()
    second = enqueue(producer)
    assert worker.deliver(second) == ["sent"]
    assert len(outbox_context.deliveries.get(second).attempts) == 1  # reconnected in place


def test_no_settings_fails_with_a_configuration_reason(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker
) -> None:
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    record = outbox_context.deliveries.get(delivery_id)
    assert "not configured" in (record.last_error or "")
    assert [a.outcome for a in record.attempts] == ["configuration"]


def test_settings_saved_with_another_key_fail_with_a_configuration_reason(
    outbox_context: OutboxContext,
    producer: Producer,
    plain_peer: SmtpPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(outbox_context, plain_peer, password=SecretStr("pw"))
    monkeypatch.setenv("OUTBOX_SECRET_KEY", Fernet.generate_key().decode())
    other_key_worker = InProcessWorker(OutboxContext.from_environment())
    try:
        delivery_id = enqueue(producer)
        assert other_key_worker.deliver(delivery_id) == ["failed"]
    finally:
        other_key_worker.close()
    record = outbox_context.deliveries.get(delivery_id)
    assert "OUTBOX_SECRET_KEY" in (record.last_error or "")
    assert [a.outcome for a in record.attempts] == ["configuration"]


def test_starttls_required_but_not_offered_is_a_configuration_failure(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, plain_peer: SmtpPeer
) -> None:
    configure(outbox_context, plain_peer, tls=TlsMode.STARTTLS)
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    assert outbox_context.deliveries.get(delivery_id).next_attempt_at is None  # no retry
    record = outbox_context.deliveries.get(delivery_id)
    assert "STARTTLS" in (record.last_error or "")


def test_an_unreadable_record_fails_alone(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    configure(outbox_context, plain_peer)
    broken, fine = enqueue(producer), enqueue(producer)
    redis_client.hset(record_key(broken), "message", "{not json")
    assert worker.deliver(broken, fine) == ["failed", "sent"]
    assert "cannot be read" in as_text(redis_client.hget(record_key(broken), "last_error") or b"")
