"""Graph delivery through the real worker runtime against the local identity+Graph stand-in."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trustme
from pydantic import SecretStr

from config.errors import TransientError
from config.mail_settings import OAuthSettings, SmtpSettings, TlsMode
from peers.graph_standin import GraphStandIn, ScriptedResponse
from peers.smtp_peer import smtp_peer
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tests.support.in_process_worker import InProcessWorker
from worker.message import OutgoingMessage
from worker.records import DeliveryStatus, RecipientState
from worker.transports.factory import HttpClients, create_transport

TENANT, CLIENT_ID, SECRET = "contoso-tenant", "app-client-id", "app-secret-value"
MAILBOX = "robot@contoso.com"


@pytest.fixture
def graph(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(
        server_certificate, tenant=TENANT, client_id=CLIENT_ID, client_secret=SECRET
    ) as running:
        yield running


def configure(outbox_context: OutboxContext, graph: GraphStandIn, **overrides: object) -> None:
    fields: dict[str, object] = {
        "from_mailbox": MAILBOX,
        "instance": graph.base_url,
        "api_url": graph.base_url,
        "tenant": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(SECRET),
        **overrides,
    }
    outbox_context.settings_store.save(OAuthSettings.model_validate(fields))


def enqueue(producer: Producer, **fields: object) -> str:
    message = MessageInput.model_validate(
        {"to": ["alice@example.com"], "subject": "Run results", "text": "All green.", **fields}
    )
    return producer.enqueue(message).id


def send_mail_requests(graph: GraphStandIn) -> list[float]:
    return [r.at for r in graph.requests if r.path.endswith("/sendMail")]


def test_send_mail_request_matches_the_message(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    delivery_id = enqueue(
        producer,
        cc=["bob@example.com"],
        bcc=["carol@example.com"],
        reply_to=["replies@example.com"],
        html="<p>All <b>green</b>.</p>",
        headers={"X-Schedule": "nightly"},
        attachments=[{"name": "log.txt", "content_type": "text/plain", "content": b"ok\n"}],
    )
    assert worker.deliver(delivery_id) == ["sent"]

    [request] = [r for r in graph.requests if r.path.endswith("/sendMail")]
    assert request.path == f"/v1.0/users/{MAILBOX}/sendMail"
    body = request.json()
    assert body["saveToSentItems"] is False
    message = body["message"]
    record = outbox_context.deliveries.get(delivery_id)
    assert message["subject"] == "Run results"
    assert message["body"] == {"contentType": "HTML", "content": "<p>All <b>green</b>.</p>"}
    assert message["toRecipients"] == [{"emailAddress": {"address": "alice@example.com"}}]
    assert message["ccRecipients"] == [{"emailAddress": {"address": "bob@example.com"}}]
    assert message["bccRecipients"] == [{"emailAddress": {"address": "carol@example.com"}}]
    assert message["replyTo"] == [{"emailAddress": {"address": "replies@example.com"}}]
    assert message["internetMessageHeaders"] == [{"name": "X-Schedule", "value": "nightly"}]
    assert message["internetMessageId"] == record.message.message_id
    assert message["attachments"] == [
        {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": "log.txt",
            "contentType": "text/plain",
            "contentBytes": base64.b64encode(b"ok\n").decode(),
        }
    ]
    assert record.status is DeliveryStatus.SENT
    assert [(r.status, r.code) for r in record.recipients] == [(RecipientState.SENT, 202)] * 3


def test_many_emails_one_token_request(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    created = producer.enqueue_many(
        [MessageInput(to=["a@example.com"], subject=f"n{n}", text="x") for n in range(200)]
    )
    ids = [c.id for c in created]
    for start in range(0, 200, 50):
        assert worker.deliver(*ids[start : start + 50]) == ["sent"] * 50
    assert len(send_mail_requests(graph)) == 200
    assert graph.token_requests == 1
    assert graph.max_in_flight <= outbox_context.settings.graph_max_concurrency


def test_wrong_client_secret_is_a_configuration_failure(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    graph: GraphStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    configure(outbox_context, graph, client_secret=SecretStr("not-the-Secret-42"))
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    assert outbox_context.deliveries.get(delivery_id).next_attempt_at is None  # no retry
    record = outbox_context.deliveries.get(delivery_id)
    [attempt] = record.attempts
    assert (attempt.outcome, attempt.code) == ("configuration", 7000215)
    assert "invalid_client" in (record.last_error or "")
    assert "not-the-Secret-42" not in repr(record) + caplog.text
    assert send_mail_requests(graph) == []


def test_unknown_tenant_is_a_configuration_failure(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph, tenant="no-such-tenant")
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    record = outbox_context.deliveries.get(delivery_id)
    assert [a.outcome for a in record.attempts] == ["configuration"]
    assert "no-such-tenant" in (record.last_error or "")


def test_429_pauses_the_mailbox_for_its_retry_after_without_counting_an_attempt(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    graph.send_mail_faults.append(
        ScriptedResponse(
            429,
            {"Retry-After": "2"},
            {"error": {"code": "ApplicationThrottled", "message": "Too many requests"}},
        )
    )
    delivery_id = enqueue(producer)
    assert worker.settle(delivery_id) == "sent"
    first, second = send_mail_requests(graph)
    assert second - first >= 2.0
    record = outbox_context.deliveries.get(delivery_id)
    assert [(a.outcome, a.code) for a in record.attempts] == [("throttled", 429), ("sent", 202)]
    assert "ApplicationThrottled" in (record.attempts[0].reply or "")
    # The pause is the mailbox's, not the e-mail's fault: its retry budget is untouched.
    assert record.attempts_this_round == 1


def test_503_storm_then_recovery_is_sent(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    unavailable = ScriptedResponse(
        503, {}, {"error": {"code": "ServiceUnavailable", "message": "Try later"}}
    )
    graph.send_mail_faults.extend([unavailable] * 3)
    delivery_id = enqueue(producer)
    assert worker.settle(delivery_id) == "sent"
    outcomes = [a.outcome for a in outbox_context.deliveries.get(delivery_id).attempts]
    assert outcomes == ["transient", "transient", "transient", "sent"]


def test_other_4xx_is_permanent_with_graphs_code(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    graph.send_mail_faults.append(
        ScriptedResponse(
            400, {}, {"error": {"code": "ErrorInvalidRecipients", "message": "Bad recipient"}}
        )
    )
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    assert outbox_context.deliveries.get(delivery_id).next_attempt_at is None  # no retry
    record = outbox_context.deliveries.get(delivery_id)
    assert [(a.outcome, a.code) for a in record.attempts] == [("permanent", 400)]
    assert "ErrorInvalidRecipients: Bad recipient" in (record.last_error or "")


def test_a_stale_token_is_refreshed_once_and_the_send_retried_in_place(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    assert worker.deliver(enqueue(producer)) == ["sent"]
    graph.invalidate_tokens()
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["sent"]
    assert graph.token_requests == 2
    assert len(outbox_context.deliveries.get(delivery_id).attempts) == 1


def test_a_large_attachment_goes_through_an_upload_session(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    content = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    delivery_id = enqueue(
        producer,
        attachments=[
            {"name": "big.bin", "content_type": "application/octet-stream", "content": content},
            {"name": "small.txt", "content_type": "text/plain", "content": b"small"},
        ],
    )
    assert worker.deliver(delivery_id) == ["sent"]
    uploads = [r for r in graph.requests if r.method == "PUT"]
    assert len(uploads) >= 2
    assert all(len(r.body) <= 4 * 1024 * 1024 for r in uploads)
    assert all("authorization" not in r.headers for r in uploads)
    assert b"".join(r.body for r in uploads) == content
    assert send_mail_requests(graph) == []
    [sent] = graph.sent_messages()
    by_name = {a["name"]: a for a in sent["attachments"]}
    assert base64.b64decode(by_name["big.bin"]["contentBytes"]) == content
    assert base64.b64decode(by_name["small.txt"]["contentBytes"]) == b"small"


def test_concurrency_per_mailbox_stays_under_graphs_limit(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    graph.mailbox_concurrency_limit = 4
    graph.send_mail_delay_seconds = 0.05
    created = producer.enqueue_many(
        [MessageInput(to=["a@example.com"], subject=f"n{n}", text="x") for n in range(40)]
    )
    assert worker.deliver(*[c.id for c in created]) == ["sent"] * 40
    assert graph.throttled == 0
    assert graph.max_in_flight == 4


def test_switching_from_smtp_to_oauth_applies_to_the_next_job(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    with smtp_peer() as peer:
        outbox_context.settings_store.save(
            SmtpSettings(server=peer.host, port=peer.port, from_mailbox=MAILBOX, tls=TlsMode.NONE)
        )
        assert worker.deliver(enqueue(producer)) == ["sent"]
        configure(outbox_context, graph)
        assert worker.deliver(enqueue(producer)) == ["sent"]
        assert len(peer.messages) == 1
    assert len(send_mail_requests(graph)) == 1


def test_other_libraries_ca_variables_do_not_override_the_bundle(
    outbox_context: OutboxContext,
    producer: Producer,
    graph: GraphStandIn,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(variable, "/nonexistent/ca.pem")
    configure(outbox_context, graph)
    worker = InProcessWorker(OutboxContext.from_environment())
    try:
        assert worker.deliver(enqueue(producer)) == ["sent"]
    finally:
        worker.close()


def test_the_mailbox_limit_holds_across_worker_processes(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    graph.mailbox_concurrency_limit = 4
    graph.send_mail_delay_seconds = 0.05
    ids = [
        c.id
        for c in producer.enqueue_many(
            [MessageInput(to=["a@example.com"], subject=f"n{n}", text="x") for n in range(60)]
        )
    ]
    second = InProcessWorker(OutboxContext.from_environment())  # another process's runtime
    try:
        with ThreadPoolExecutor(2) as pool:
            first_half = pool.submit(worker.deliver, *ids[:30])
            second_half = pool.submit(second.deliver, *ids[30:])
            assert first_half.result() + second_half.result() == ["sent"] * 60
    finally:
        second.close()
    assert graph.throttled == 0
    assert graph.max_in_flight == 4


def test_a_duplicate_job_does_not_run_a_scheduled_retry_early(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    graph: GraphStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    configure(outbox_context, graph)
    graph.send_mail_faults.append(
        ScriptedResponse(503, {"Retry-After": "30"}, {"error": {"code": "ServiceUnavailable"}})
    )
    graph.send_mail_faults.append(
        ScriptedResponse(429, {"Retry-After": "30"}, {"error": {"code": "TooManyRequests"}})
    )
    retried, paused = enqueue(producer), enqueue(producer)
    assert worker.deliver(retried) == ["retrying"]
    assert worker.deliver(retried) == ["early"]  # e.g. a redelivered task message
    assert worker.deliver(paused) == ["waiting"]  # the mailbox paused for 30 s
    assert worker.deliver(paused) == ["early"]
    assert len(send_mail_requests(graph)) == 2
    assert MAILBOX not in caplog.text  # request URLs carry the mailbox: not logged


def test_intranet_and_non_ascii_addresses_go_to_graph_as_they_are(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    configure(outbox_context, graph)
    delivery_id = enqueue(producer, to=["jörg@example.com", "ops@corp.local"])
    assert worker.deliver(delivery_id) == ["sent"]
    [message] = graph.sent_messages()
    assert message["toRecipients"] == [
        {"emailAddress": {"address": "jörg@example.com"}},
        {"emailAddress": {"address": "ops@corp.local"}},
    ]


def test_an_error_that_quotes_the_access_token_is_recorded_without_it(
    outbox_context: OutboxContext, producer: Producer, worker: InProcessWorker, graph: GraphStandIn
) -> None:
    """Graph, or a proxy in front of it, may echo the request it refused: the token it quotes
    must not reach the record."""
    configure(outbox_context, graph)
    assert worker.deliver(enqueue(producer)) == ["sent"]  # the process now holds a token
    [token] = graph.issued_tokens()
    graph.send_mail_faults.append(
        ScriptedResponse(
            400,
            {},
            {
                "error": {
                    "code": "BadRequest",
                    "message": f"refused 'Authorization: Bearer {token}'",
                }
            },
        )
    )
    delivery_id = enqueue(producer)
    assert worker.deliver(delivery_id) == ["failed"]
    record = outbox_context.deliveries.get(delivery_id)
    kept = [record.last_error or "", *(a.reply or "" for a in record.attempts)]
    assert all(token not in text for text in kept), kept
    assert "refused 'Authorization: Bearer ********'" in (record.last_error or "")


def test_a_send_held_back_before_its_request_reaches_graph_sends_nothing(
    outbox_context: OutboxContext, graph: GraphStandIn
) -> None:
    settings = OAuthSettings.model_validate(
        {
            "from_mailbox": MAILBOX,
            "instance": graph.base_url,
            "api_url": graph.base_url,
            "tenant": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": SecretStr(SECRET),
        }
    )
    message = OutgoingMessage(message_id="<m1@outbox.test>", to=("alice@example.com",), subject="s")

    def lost_claim() -> None:
        raise TransientError("not sent: its claim was lost to another process")

    async def run() -> None:
        options = outbox_context.transport_options
        http = HttpClients.build(options)
        transport = create_transport(settings, options, http)
        try:
            with pytest.raises(TransientError, match="claim was lost"):
                await transport.send(message, message.recipients, 0.0, lost_claim)
        finally:
            await http.aclose()

    asyncio.run(run())
    assert send_mail_requests(graph) == []
