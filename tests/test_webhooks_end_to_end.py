"""Delivery webhooks end to end: the ``outbox worker`` command (Celery, its pool processes and
their dispatchers), a real Redis, an SMTP peer and real HTTP receivers on 127.0.0.1 that
verify each event with the independent ``standardwebhooks`` package."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
import trustme
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import Service, run_outbox
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tests.support.environment import context_of, fresh_environment
from tests.support.webhook_receiver import Receiver, webhook_receiver
from worker.records import DeliveryStatus
from worker.webhooks import EndpointStore, WebhookDeliveries

REFUSED = "nobody@example.com"


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    # A database of its own: no other module's worker takes these tasks.
    return fresh_environment(
        redis_server.url.removesuffix("/0") + "/7",
        tmp_path_factory.mktemp("webhooks"),
        certificate_authority,
        OUTBOX_MAX_ATTEMPTS="1",
    )


@pytest.fixture(scope="module")
def context(env: dict[str, str]) -> OutboxContext:
    return context_of(env)


@pytest.fixture(scope="module")
def peer(context: OutboxContext) -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        running.rcpt_replies[REFUSED] = "550 5.1.1 no such user"
        context.settings_store.save(
            SmtpSettings(
                server=running.host,
                port=running.port,
                from_mailbox="robot@example.com",
                tls=TlsMode.NONE,
            )
        )
        yield running


@pytest.fixture(scope="module")
def worker(env: dict[str, str], peer: SmtpPeer) -> Iterator[Service]:
    service = Service(["outbox", "worker"], env)
    try:
        service.wait_for_output(" ready.")
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def keys(context: OutboxContext) -> ApiKeyStore:
    return ApiKeyStore(context.redis)


@pytest.fixture(scope="module")
def producers(keys: ApiKeyStore) -> dict[str, str]:
    """Two producer keys, by name."""
    return {name: keys.create(name, Role.PRODUCER) for name in ("scheduler", "flows")}


@pytest.fixture(scope="module")
def api(context: OutboxContext) -> Iterator[TestClient]:
    with TestClient(create_app(context)) as client:
        yield client


@pytest.fixture
def endpoints(
    context: OutboxContext, keys: ApiKeyStore, worker: Service
) -> Iterator[EndpointStore]:
    """The endpoint store; every endpoint a test adds is removed after it."""
    store = EndpointStore(
        context.redis, context.secret_box, key_exists=lambda name: keys.holder(name) is not None
    )
    yield store
    for endpoint in store.list():
        store.remove(endpoint.id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def send(api: TestClient, key: str, to: str, subject: str) -> str:
    """POST /api/emails with a producer's key: the delivery is created by that key."""
    body = {"to": [to], "subject": subject, "text": "x", "idempotency_key": f"{subject}-{uuid4()}"}
    answer = api.post("/api/emails", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 202, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def recent(context: OutboxContext) -> list[dict[str, Any]]:
    """The webhook deliveries, newest first, as the API and ``--json`` show them."""
    return [delivery.as_json() for delivery in WebhookDeliveries(context.redis).recent(100)]


def wait_final(context: OutboxContext, delivery_id: str, timeout: float = 20) -> DeliveryStatus:
    deadline = time.monotonic() + timeout
    while not (status := context.deliveries.get(delivery_id).status).is_final:
        assert time.monotonic() < deadline, f"{delivery_id} still {status}"
        time.sleep(0.05)
    return status


def events_of(receiver: Receiver, secret: str, count: int, timeout: float = 15) -> list[Any]:
    """The events received, each verified by the independent implementation."""
    return [
        Webhook(secret).verify(request.body, request.headers)
        for request in receiver.wait_for(count, timeout)
    ]


def test_a_sent_and_a_failed_email_are_announced_signed(
    api: TestClient,
    producers: dict[str, str],
    context: OutboxContext,
    endpoints: EndpointStore,
    receiver: Receiver,
) -> None:
    _, secret = endpoints.add(receiver.url)
    sent = send(api, producers["scheduler"], "alice@example.com", "good")
    failed = send(api, producers["scheduler"], REFUSED, "bad")
    assert wait_final(context, sent) is DeliveryStatus.SENT
    assert wait_final(context, failed) is DeliveryStatus.FAILED

    events = {event["delivery_id"]: event for event in events_of(receiver, secret, 2)}
    assert events[sent]["type"] == events[sent]["status"] == "sent"
    assert events[sent]["attempts"] == 1
    assert events[sent]["recipients"] == [
        {"address": "alice@example.com", "status": "sent", "code": 250, "reply": "accepted"}
    ]
    assert events[failed]["type"] == "failed"
    [refused] = events[failed]["recipients"]
    assert (refused["address"], refused["status"], refused["code"]) == (REFUSED, "failed", 550)
    assert "no such user" in refused["reply"]
    assert events[failed]["idempotency_key"].startswith("bad-")
    assert events[sent]["timestamp"].endswith("Z")
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("msg_")


def test_a_failed_answer_is_retried_after_5_seconds_with_the_same_id(
    api: TestClient,
    producers: dict[str, str],
    context: OutboxContext,
    env: dict[str, str],
    endpoints: EndpointStore,
    receiver: Receiver,
) -> None:
    receiver.answers = [500, 200]
    _, secret = endpoints.add(receiver.url, "sent")
    wait_final(context, send(api, producers["scheduler"], "bob@example.com", "retried"))

    first, second = receiver.wait_for(2, timeout=20)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert 4.5 <= second.at - first.at <= 7.5  # the schedule's first delay, then a poll
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert Webhook(secret).verify(second.body, second.headers)["type"] == "sent"

    shown = run_outbox(env, "webhooks", "deliveries", "--json")
    assert shown.returncode == 0, shown.stderr
    deadline = time.monotonic() + 5
    while (delivery := json.loads(shown.stdout)[0])["status"] != "delivered":
        assert time.monotonic() < deadline, delivery
        shown = run_outbox(env, "webhooks", "deliveries", "--json")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["response"] == "receiver says no"
    assert delivery["id"] == first.headers["webhook-id"]
    listed = run_outbox(env, "webhooks", "deliveries")
    assert f"{delivery['id']}  sent" in listed.stdout
    assert "delivered attempts 2" in listed.stdout


def test_an_endpoint_tied_to_a_key_receives_only_that_keys_deliveries(
    api: TestClient,
    producers: dict[str, str],
    context: OutboxContext,
    endpoints: EndpointStore,
) -> None:
    with webhook_receiver() as tied, webhook_receiver() as everything:
        _, tied_secret = endpoints.add(tied.url, key="scheduler")
        _, all_secret = endpoints.add(everything.url)
        mine = send(api, producers["scheduler"], "carol@example.com", "mine")
        theirs = send(api, producers["flows"], "dave@example.com", "theirs")
        wait_final(context, mine)
        wait_final(context, theirs)
        assert {e["delivery_id"] for e in events_of(everything, all_secret, 2)} == {mine, theirs}
        time.sleep(1)  # what the tied endpoint would have been sent by now
        assert [e["delivery_id"] for e in events_of(tied, tied_secret, 1)] == [mine]


def test_a_hanging_endpoint_never_delays_an_email(
    api: TestClient,
    producers: dict[str, str],
    context: OutboxContext,
    endpoints: EndpointStore,
    receiver: Receiver,
    peer: SmtpPeer,
) -> None:
    receiver.hang_seconds = 8  # longer than the 5-second timeout
    endpoints.add(receiver.url, "sent")
    wait_final(context, send(api, producers["scheduler"], "erin@example.com", "first"))
    receiver.wait_for(1)  # its webhook hangs now

    started = time.monotonic()
    later = [
        send(api, producers["scheduler"], f"r{n}@example.com", f"later-{n}") for n in range(20)
    ]
    for delivery_id in later:
        assert wait_final(context, delivery_id) is DeliveryStatus.SENT
    assert time.monotonic() - started < 4  # while every webhook of theirs hangs or waits

    deadline = time.monotonic() + 10
    while True:
        hung = [a for d in recent(context) for a in d["attempts"] if "error" in a]
        if hung:
            break
        assert time.monotonic() < deadline, "no attempt timed out"
        time.sleep(0.2)
    assert hung[0]["error"] == "no answer within 5 s"
    assert 5000 <= hung[0]["duration_ms"] < 6500


def test_a_redirect_is_not_followed(
    api: TestClient,
    producers: dict[str, str],
    context: OutboxContext,
    endpoints: EndpointStore,
    receiver: Receiver,
) -> None:
    with webhook_receiver() as elsewhere:
        receiver.redirect_to = elsewhere.url
        endpoints.add(receiver.url, "sent")
        wait_final(context, send(api, producers["scheduler"], "frank@example.com", "moved"))
        receiver.wait_for(1)
        deadline = time.monotonic() + 10
        while not (found := recent(context)) or not found[0]["attempts"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        [attempt] = found[0]["attempts"]
        assert attempt["status_code"] == 307
        assert attempt["error"] == f"redirect to {elsewhere.url!r} not followed"
        assert found[0]["status"] == "retrying"
        assert elsewhere.requests == []
