"""Scheduled send and cancel, against a real Redis, the real worker runtime and SMTP peer: a
scheduled e-mail is never claimed before its time, goes out within seconds after it in its
own priority, and a cancelled one is never sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from peers.processes import run_outbox
from peers.smtp_peer import SmtpPeer
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tests.conftest import CollectingPublisher
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import configure, enqueue
from worker.deliver import JobOutcome
from worker.records import DeliveryStatus, Priority, RecipientState


def rfc3339(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


def wait_until(moment: float) -> None:
    time.sleep(max(moment - time.time(), 0))


def published_at(worker: InProcessWorker, delivery_id: str, timeout: float) -> float:
    """When (unix time) the worker's own sweeper published the delivery."""
    deadline = time.monotonic() + timeout
    while not worker.queue.take(delivery_id):
        assert time.monotonic() < deadline, f"{delivery_id} was not published"
        time.sleep(0.02)
    return time.time()


def test_a_scheduled_email_waits_for_its_time_then_goes_out_in_its_priority(
    outbox_context: OutboxContext,
    producer: Producer,
    publisher: CollectingPublisher,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
) -> None:
    configure(outbox_context, plain_peer)
    send_at = time.time() + 2
    delivery_id = enqueue(producer, send_at=rfc3339(2), priority="high")

    record = outbox_context.deliveries.get(delivery_id)
    assert record.status is DeliveryStatus.SCHEDULED
    assert record.send_at == pytest.approx(send_at, abs=0.01)
    assert publisher.chunks == []  # not handed to the broker: the sweeper publishes it
    # A task for it before its time (a duplicate, a stray publish) does not send it.
    assert worker.deliver(delivery_id) == [JobOutcome.EARLY]
    assert worker.runtime.sweep_now() == []
    assert plain_peer.messages == []

    # The sweeper wakes for the earliest due time: published at its time, not an interval on.
    published = published_at(worker, delivery_id, timeout=10)
    assert send_at <= published < send_at + 1
    assert worker.queue.priorities[delivery_id] is Priority.HIGH
    assert worker.deliver(delivery_id) == [JobOutcome.SENT]
    [received] = plain_peer.wait_for_messages(1)
    # Its Date is when it was meant to go, not when it was stored.
    assert f"Date: {time.strftime('%a, %d %b %Y', time.gmtime(send_at))}".encode() in (
        received.data
    )


def test_a_send_time_already_past_means_now(
    outbox_context: OutboxContext, producer: Producer, publisher: CollectingPublisher
) -> None:
    delivery_id = enqueue(producer, send_at=rfc3339(-60))
    assert outbox_context.deliveries.get(delivery_id).status is DeliveryStatus.QUEUED
    assert publisher.chunks == [[delivery_id]]


@pytest.mark.parametrize(
    ("send_at", "problem"),
    [
        ("2027-01-01T08:00:00", "timezone"),  # no time zone: which 8 o'clock?
        (rfc3339(400 * 86400), "at most a year"),
        ("next tuesday", "datetime"),
    ],
)
def test_a_send_time_is_validated(send_at: str, problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        MessageInput.model_validate({"to": ["a@example.com"], "subject": "s", "send_at": send_at})
    [error] = raised.value.errors()
    assert error["loc"] == ("send_at",)
    assert problem in error["msg"]


@pytest.fixture
def api(outbox_context: OutboxContext) -> Iterator[TestClient]:
    with TestClient(create_app(outbox_context)) as client:
        yield client


@pytest.fixture
def keys(outbox_context: OutboxContext) -> ApiKeyStore:
    return ApiKeyStore(outbox_context.redis)


def bearer(keys: ApiKeyStore, name: str, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.create(name, role)}"}


def post_email(api: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"to": ["a@example.com"], "subject": "Run 7", "text": "x", **fields}
    response = api.post("/api/emails", json=body, headers=headers)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_api_schedules_and_refuses_a_time_too_far_ahead_by_field(
    api: TestClient, keys: ApiKeyStore
) -> None:
    headers = bearer(keys, "scheduler", Role.PRODUCER)
    answer = post_email(api, headers, send_at=rfc3339(3600))
    assert answer["status"] == "scheduled"
    shown = api.get(f"/api/emails/{answer['id']}", headers=headers).json()
    assert (shown["status"], shown["send_at"]) == (
        "scheduled",
        pytest.approx(time.time() + 3600, abs=5),
    )

    too_far = api.post(
        "/api/emails",
        json={"to": ["a@example.com"], "subject": "s", "send_at": rfc3339(366 * 86400)},
        headers=headers,
    )
    assert too_far.status_code == 422
    assert too_far.json()["field"] == "send_at"

    [in_batch] = api.post(
        "/api/emails/batch",
        json=[{"to": ["b@example.com"], "subject": "s", "send_at": rfc3339(60)}],
        headers=headers,
    ).json()
    assert in_batch["status"] == "scheduled"


def test_a_cancelled_email_is_never_sent(
    outbox_context: OutboxContext,
    api: TestClient,
    keys: ApiKeyStore,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
) -> None:
    configure(outbox_context, plain_peer)
    headers = bearer(keys, "scheduler", Role.PRODUCER)
    scheduled = post_email(api, headers, send_at=rfc3339(1))["id"]
    queued = post_email(api, headers)["id"]  # its task waits in the broker's queue

    for delivery_id in (scheduled, queued):
        answer = api.delete(f"/api/emails/{delivery_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": delivery_id, "status": "cancelled"}

    wait_until(time.time() + 1.5)
    worker.runtime.sweep_now()
    assert not worker.queue.take(scheduled)
    # Its task still reaches a worker, which finds it cancelled.
    assert worker.deliver(scheduled, queued) == [JobOutcome.CANCELLED, JobOutcome.CANCELLED]
    record = outbox_context.deliveries.get(queued)
    assert record.status is DeliveryStatus.CANCELLED
    assert [r.status for r in record.recipients] == [RecipientState.CANCELLED]
    assert plain_peer.messages == []

    again = api.delete(f"/api/emails/{queued}", headers=headers)
    assert again.status_code == 409
    assert again.json()["detail"] == f"delivery {queued} was not cancelled: it is already cancelled"


def test_a_delivery_being_sent_or_sent_cannot_be_cancelled(
    outbox_context: OutboxContext,
    api: TestClient,
    keys: ApiKeyStore,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
) -> None:
    configure(outbox_context, plain_peer)
    headers = bearer(keys, "ann", Role.ADMIN)
    delivery_id = post_email(api, headers)["id"]
    plain_peer.data_delay_seconds = 2
    outcomes: list[JobOutcome] = []
    sending = threading.Thread(target=lambda: outcomes.extend(worker.deliver(delivery_id)))
    sending.start()
    deadline = time.monotonic() + 10
    while outbox_context.deliveries.get(delivery_id).status is not DeliveryStatus.SENDING:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    refused = api.delete(f"/api/emails/{delivery_id}", headers=headers)
    assert refused.status_code == 409
    assert "being sent right now" in refused.json()["detail"]
    sending.join(timeout=20)
    assert outcomes == [JobOutcome.SENT]
    after = api.delete(f"/api/emails/{delivery_id}", headers=headers)
    assert after.status_code == 409
    assert after.json()["detail"].endswith("it is already sent")


def test_a_producer_cancels_only_its_own_deliveries(api: TestClient, keys: ApiKeyStore) -> None:
    mine = bearer(keys, "scheduler", Role.PRODUCER)
    theirs = bearer(keys, "other", Role.PRODUCER)
    delivery_id = post_email(api, theirs, send_at=rfc3339(600))["id"]
    assert api.delete(f"/api/emails/{delivery_id}", headers=mine).status_code == 404
    assert api.get(f"/api/emails/{delivery_id}", headers=theirs).json()["status"] == "scheduled"


def test_a_whole_run_is_withdrawn_by_its_idempotency_prefix(
    outbox_context: OutboxContext, api: TestClient, keys: ApiKeyStore, outbox_env: dict[str, str]
) -> None:
    mine = bearer(keys, "scheduler", Role.PRODUCER)
    theirs = bearer(keys, "other", Role.PRODUCER)
    admin = bearer(keys, "ann", Role.ADMIN)

    def run_email(headers: dict[str, str], key: str) -> str:
        answer = api.post(
            "/api/emails",
            json={"to": ["a@example.com"], "subject": "s", "send_at": rfc3339(600)},
            headers={**headers, "Idempotency-Key": key},
        )
        assert answer.status_code == 202
        identifier: str = answer.json()["id"]
        return identifier

    run = [run_email(mine, f"run-7:{n}") for n in range(3)]
    other_run = run_email(mine, "run-70:0")
    same_key_other_producer = run_email(theirs, "run-7:0")

    answer = api.post("/api/emails/cancel", json={"idempotency_prefix": "run-7:"}, headers=mine)
    assert answer.status_code == 200
    assert answer.json() == {"cancelled": sorted(run), "not_cancelled": []}
    statuses = outbox_context.deliveries.statuses([other_run, same_key_other_producer])
    assert statuses == [DeliveryStatus.SCHEDULED, DeliveryStatus.SCHEDULED]

    # An admin reaches every producer's; what is already final is listed with why.
    again = api.post("/api/emails/cancel", json={"idempotency_prefix": "run-7"}, headers=admin)
    assert sorted(again.json()["cancelled"]) == sorted([other_run, same_key_other_producer])
    assert {each["id"] for each in again.json()["not_cancelled"]} == set(run)
    refused = api.post("/api/emails/cancel", json={"idempotency_prefix": ""}, headers=admin)
    assert (refused.status_code, refused.json()["field"]) == (422, "idempotency_prefix")

    # The operator's CLI does the same, and says what it did.
    sent = run_outbox(
        outbox_env,
        "send",
        "--to",
        "b@example.com",
        "--subject",
        "s",
        "--idempotency-key",
        "nightly-3:b",
        "--send-at",
        rfc3339(600),
    )
    assert sent.returncode == 0, sent.stderr
    cancelled = run_outbox(outbox_env, "cancel", "--idempotency-prefix", "nightly-3:")
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled {sent.stdout.strip()}\n")
    once_more = run_outbox(outbox_env, "cancel", sent.stdout.strip())
    assert once_more.returncode == 1
    assert "it is already cancelled" in once_more.stdout
