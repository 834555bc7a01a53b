"""Microsoft 365 over SMTP, as outbox's users send through it: AUTH XOAUTH2 with a token from
the identity platform, basic authentication refused, send-as refused, the per-minute quota
(the account pauses, nothing fails), too many recipients per transaction, and outbox's own
sending limits; all against the Exchange Online stand-in and the identity stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import trustme
from pydantic import SecretStr

from config.errors import ConfigurationError
from config.mail_settings import SmtpSettings
from peers.exchange_standin import ExchangeStandIn
from peers.graph_standin import GraphStandIn
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tasks.settings_checks import check_connection
from tests.support.in_process_worker import InProcessWorker
from worker.deliver import JobOutcome
from worker.records import DeliveryStatus, RecipientState

TENANT, CLIENT_ID, SECRET = "contoso-tenant", "app-client-id", "app-secret-value"
MAILBOX = "robot@contoso.com"


@pytest.fixture
def identity(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(
        server_certificate, tenant=TENANT, client_id=CLIENT_ID, client_secret=SECRET
    ) as running:
        yield running


@pytest.fixture
def exchange(
    server_certificate: trustme.LeafCert, identity: GraphStandIn
) -> Iterator[ExchangeStandIn]:
    # Exchange's 3 concurrent submissions per mailbox are not what these tests are about.
    with ExchangeStandIn(
        server_certificate, identity, [MAILBOX], concurrent_submissions=None
    ) as running:
        yield running


def oauth2_settings(
    exchange: ExchangeStandIn, identity: GraphStandIn, **overrides: object
) -> SmtpSettings:
    return SmtpSettings.model_validate(
        {
            "server": exchange.host,
            "port": exchange.port,
            "from_mailbox": MAILBOX,
            "auth": "oauth2",
            "tenant": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": SecretStr(SECRET),
            "instance": identity.base_url,
            **overrides,
        }
    )


def enqueue(producer: Producer, **fields: object) -> str:
    message = MessageInput.model_validate(
        {"to": ["alice@example.com"], "subject": "Nightly run", "text": "42 passed", **fields}
    )
    return producer.enqueue(message).id


def test_oauth2_logs_in_with_xoauth2_and_sends(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    outbox_context.settings_store.save(oauth2_settings(exchange, identity))
    first, second = enqueue(producer), enqueue(producer)
    assert worker.deliver(first) == ["sent"]
    assert worker.deliver(second) == ["sent"]
    accepted = exchange.accepted_messages()
    assert [m.mail_from for m in accepted] == [MAILBOX, MAILBOX]
    # One token and one login for both: the session and the token are reused.
    assert (exchange.xoauth2_logins, exchange.password_logins) == (1, 0)
    assert identity.token_requests == 1
    record = outbox_context.deliveries.get(first)
    assert accepted[0].message_id == record.message.message_id
    # The reply's enhanced status code is kept on the attempt.
    assert record.attempts[-1].enhanced_code == "2.6.0"


def test_test_connection_with_oauth2_acquires_a_token_and_logs_in(
    outbox_context: OutboxContext, exchange: ExchangeStandIn, identity: GraphStandIn
) -> None:
    settings = oauth2_settings(exchange, identity)
    outcome = asyncio.run(check_connection(settings, outbox_context.transport_options))
    assert f"as {MAILBOX} with OAuth 2.0" in outcome
    assert exchange.xoauth2_logins == 1


def test_a_wrong_client_secret_fails_with_the_identity_platforms_own_error(
    outbox_context: OutboxContext, exchange: ExchangeStandIn, identity: GraphStandIn
) -> None:
    settings = oauth2_settings(exchange, identity, client_secret=SecretStr("not-the-secret"))
    with pytest.raises(ConfigurationError) as failed:
        asyncio.run(check_connection(settings, outbox_context.transport_options))
    assert "invalid_client" in failed.value.reason
    assert failed.value.code == 7000215  # AADSTS7000215: invalid client secret
    assert "not-the-secret" not in failed.value.reason
    assert exchange.xoauth2_logins == 0


def test_a_token_for_graph_is_refused_by_the_smtp_server(
    outbox_context: OutboxContext, exchange: ExchangeStandIn, identity: GraphStandIn
) -> None:
    settings = oauth2_settings(exchange, identity, scope="https://graph.microsoft.com/.default")
    with pytest.raises(ConfigurationError) as failed:
        asyncio.run(check_connection(settings, outbox_context.transport_options))
    assert "535 5.7.3" in failed.value.reason
    assert exchange.xoauth2_failures == 2  # the cached token, then a fresh one


def test_a_password_refused_with_5_7_30_fails_at_once_and_says_to_use_oauth2(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
) -> None:
    outbox_context.settings_store.save(
        SmtpSettings(
            server=exchange.host,
            port=exchange.port,
            from_mailbox=MAILBOX,
            username=MAILBOX,
            password=SecretStr("hunter2"),
        )
    )
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    record = outbox_context.deliveries.get(delivery_id)
    assert [a.outcome for a in record.attempts] == ["configuration"]  # never retried
    assert record.attempts[0].enhanced_code == "5.7.30"
    assert "set Authentication to OAuth 2.0" in (record.last_error or "")
    assert "hunter2" not in repr(record)


def test_sending_as_another_mailbox_is_a_configuration_error_naming_send_as(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    outbox_context.settings_store.save(
        oauth2_settings(exchange, identity, from_mailbox="ceo@contoso.com", username=MAILBOX)
    )
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    record = outbox_context.deliveries.get(delivery_id)
    assert record.attempts[0].outcome == "configuration"
    assert "5.7.60" in (record.last_error or "")
    assert "Send As" in (record.last_error or "")


def test_the_per_minute_quota_pauses_the_account_and_nothing_fails(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    exchange.messages_per_minute = 2
    exchange.window_seconds = 1.5
    outbox_context.settings_store.save(oauth2_settings(exchange, identity))
    ids = [enqueue(producer, subject=f"run {n}") for n in range(4)]
    outcomes = worker.deliver(*ids)
    assert outcomes.count(JobOutcome.SENT) == 2
    # 554 5.2.0 SubmissionQuotaExceeded paused the account: the others in flight with it got
    # the same refusal; none failed, none was tried again while the pause lasted.
    assert outcomes.count(JobOutcome.WAITING) == 2
    assert 1 <= len(exchange.refusals()) <= 2
    refused = next(i for i, o in zip(ids, outcomes, strict=True) if o == "waiting")
    record = outbox_context.deliveries.get(refused)
    assert record.status is DeliveryStatus.WAITING
    assert (record.waiting_for or "").startswith("the provider's pause of 554 5.2.0 ")
    assert "SubmissionQuotaExceeded" in (record.last_error or "")
    shown = outbox_context.settings_store.pause()  # what the page's banner shows
    assert shown is not None
    assert shown["reason"].startswith("554 5.2.0 ")
    time.sleep(1.6)  # the stand-in's window passes; outbox's pause (1 s in tests) is over
    for delivery_id in ids:
        if outcomes[ids.index(delivery_id)] == "waiting":
            assert worker.settle(delivery_id) == "sent"
    assert len(exchange.accepted_messages()) == 4
    throttled = outbox_context.deliveries.get(refused)
    assert [a.outcome for a in throttled.attempts] == ["throttled", "sent"]
    assert throttled.attempts_this_round == 1  # the pause did not count as an attempt


def test_a_pause_belongs_to_its_account_not_to_the_next_one(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    exchange.throttle_next(1)  # 432 4.3.2 at MAIL: Exchange throttles the mailbox
    outbox_context.settings_store.save(oauth2_settings(exchange, identity))
    assert worker.deliver(enqueue(producer)) == ["waiting"]
    assert outbox_context.settings_store.pause() is not None
    # The administrator switches to another mailbox: the pause shown is that one's (none).
    outbox_context.settings_store.save(
        oauth2_settings(exchange, identity, from_mailbox="ops@contoso.com")
    )
    assert outbox_context.settings_store.pause() is None


def test_too_many_recipients_are_sent_in_the_next_transaction_of_the_same_message(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    exchange.recipients_per_message = 2
    outbox_context.settings_store.save(oauth2_settings(exchange, identity))
    to = [f"user{n}@example.com" for n in range(5)]
    delivery_id = enqueue(producer, to=to)
    assert worker.deliver(delivery_id) == ["sent"]
    accepted = exchange.accepted_messages()
    assert [len(m.rcpt_tos) for m in accepted] == [2, 2, 1]
    assert sorted(a for m in accepted for a in m.rcpt_tos) == sorted(to)
    assert len({m.message_id for m in accepted}) == 1
    record = outbox_context.deliveries.get(delivery_id)
    assert all(r.status is RecipientState.SENT for r in record.recipients)


def test_max_recipients_per_message_splits_before_the_server_refuses(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    exchange.recipients_per_message = 2
    outbox_context.settings_store.save(
        oauth2_settings(exchange, identity, max_recipients_per_message=2)
    )
    delivery_id = enqueue(producer, to=[f"user{n}@example.com" for n in range(4)])
    assert worker.deliver(delivery_id) == ["sent"]
    assert [len(m.rcpt_tos) for m in exchange.accepted_messages()] == [2, 2]
    assert exchange.refusals() == []


def test_the_sending_limit_makes_e_mails_wait_with_the_reason_and_never_fail(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
) -> None:
    outbox_context.settings_store.save(
        oauth2_settings(exchange, identity, max_messages_per_minute=3)
    )
    ids = [enqueue(producer, subject=f"run {n}") for n in range(5)]
    outcomes = worker.deliver(*ids)
    assert (outcomes.count(JobOutcome.SENT), outcomes.count(JobOutcome.WAITING)) == (3, 2)
    assert exchange.refusals() == []
    waiting = [outbox_context.deliveries.get(i) for i, o in zip(ids, outcomes, strict=True)]
    for record in waiting:
        if record.status is DeliveryStatus.WAITING:
            assert record.waiting_for == "the sending limit, 3 per minute"
            assert record.attempts == ()  # a wait is not an attempt
            # Its place in the window comes when the first admissions leave it: a minute
            # and the margin after them.
            assert 55 < (record.next_attempt_at or 0) - time.time() < 63
