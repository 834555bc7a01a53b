"""Delivery webhooks, piece by piece against a real Redis and a real local HTTP receiver:
signatures (the specification's published example, and the independent ``standardwebhooks``
verifier), URL rules, the schedule, endpoints (CLI, API), and the dispatcher's fan-out,
retries, leases and answers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypedDict, Unpack

import pytest
import redis
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from config.errors import InvalidInputError, NotFoundError
from config.secret_box import SecretBox
from peers.processes import run_outbox
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.smtp_delivery import enqueue
from tests.support.webhook_receiver import Receiver, webhook_receiver
from worker.records import WEBHOOK_EVENTS_KEY, WEBHOOKS_KEY, record_key
from worker.webhooks import (
    MAX_ATTEMPTS,
    RETRY_DELAYS,
    EndpointStore,
    EventType,
    WebhookDeliveries,
    WebhookDispatcher,
    check_url,
    delay_after,
    message_id,
    new_secret,
    parse_events,
    sign,
    signed_headers,
    webhook_client,
)
from worker.webhooks.deliveries import DUE_KEY, delivery_key
from worker.webhooks.events import wants

# --- signing --------------------------------------------------------------------------------


def test_the_signature_matches_the_specifications_published_example() -> None:
    # The reference libraries' test vector (standard-webhooks, libraries/python/tests/
    # test_webhooks.py, test_sign_function), shared by every implementation of the spec.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_an_independent_verifier_accepts_what_outbox_signs_and_nothing_else() -> None:
    secret = new_secret()
    body = b'{"type":"sent","delivery_id":"d1","recipients":[{"address":"j\xc3\xb6rg@x.de"}]}'
    headers = signed_headers(secret, "msg_abc", int(time.time()), body)
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers)["type"] == "sent"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"sent", b"fail"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_secret_is_the_specifications_whsec_form_with_enough_randomness() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert new_secret() != secret


def test_a_message_id_is_one_per_event_and_endpoint_and_holds_no_dot() -> None:
    event = "0123456789abcdef0123456789abcdef:sent:1"
    first = message_id(event, "ep_1")
    assert first == message_id(event, "ep_1")  # a fan-out run twice stores it once
    assert first != message_id(event, "ep_2")
    assert first != message_id(event.replace(":1", ":2"), "ep_1")
    assert first.startswith("msg_")
    assert "." not in first


# --- URLs, events, schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/outbox?token=x",
        "http://127.0.0.1:8080/hook",
        "http://127.8.9.10/hook",
        "http://localhost:9000/",
        "http://[::1]:9000/hook",
    ],
)
def test_https_or_a_loopback_receiver_is_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/outbox", "must be https://"),
        ("http://10.0.0.5/hook", "not a loopback host"),
        ("http://127.0.0.1.example.com/", "not a loopback host"),
        ("ftp://hooks.example.com/", "https:// URL"),
        ("https:///no-host", "with a host"),
        ("hooks.example.com/outbox", "https:// URL"),
        ("", "give the receiver's URL"),
        ("https://example.com:port/", "not a URL"),
        ("https://exa\u00admple.com/", "not a URL: Invalid IDNA hostname"),
        ("https://hook:s3cret@hooks.example.com/", "must not hold a user name or password"),
        ("https://hooks.example.com@10.0.0.5/", "must not hold a user name or password"),
    ],
)
def test_other_urls_are_refused_naming_the_field(url: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_url(url)
    assert raised.value.field == "url"
    assert why in str(raised.value)


def test_events_default_to_all_and_sent_also_means_captured() -> None:
    assert parse_events(None) == tuple(EventType)
    assert parse_events("failed, sent") == (EventType.SENT, EventType.FAILED)
    assert wants(parse_events("sent"), "captured")
    assert not wants(parse_events("failed"), "captured")
    assert wants(parse_events("captured"), "captured")
    for bad in ("sent,bounced", "", " , "):
        with pytest.raises(InvalidInputError) as raised:
            parse_events(bad)
        assert raised.value.field == "events"


def test_the_schedule_is_the_published_reference_one() -> None:
    assert RETRY_DELAYS == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert MAX_ATTEMPTS == 8
    assert [delay_after(n) for n in range(1, 9)] == [*RETRY_DELAYS, None]
    assert sum(RETRY_DELAYS) == 5 + 300 + 1800 + 7200 + 18000 + 72000


# --- endpoints --------------------------------------------------------------------------------


@pytest.fixture
def keys(outbox_context: OutboxContext) -> ApiKeyStore:
    return ApiKeyStore(outbox_context.redis)


@pytest.fixture
def endpoints(outbox_context: OutboxContext, keys: ApiKeyStore) -> EndpointStore:
    return EndpointStore(
        outbox_context.redis,
        outbox_context.secret_box,
        key_exists=lambda name: keys.holder(name) is not None,
    )


def test_an_endpoints_secret_is_stored_encrypted_and_never_listed(
    endpoints: EndpointStore, redis_client: redis.Redis
) -> None:
    endpoint, secret = endpoints.add("https://hooks.example.com/a", "sent,failed")
    raw = redis_client.hget(WEBHOOKS_KEY, endpoint.id)
    assert raw is not None
    assert secret.encode() not in raw
    assert secret.removeprefix("whsec_").encode() not in raw
    [listed] = endpoints.list()
    assert listed.as_json() == {
        "id": endpoint.id,
        "url": "https://hooks.example.com/a",
        "events": ["sent", "failed"],
        "key": None,
        "created_at": endpoint.created_at,
    }


def test_removing_the_last_endpoint_deletes_the_hash(
    endpoints: EndpointStore, redis_client: redis.Redis
) -> None:
    first, _ = endpoints.add("https://a.example.com/")
    second, _ = endpoints.add("https://b.example.com/")
    endpoints.remove(first.id)
    assert redis_client.exists(WEBHOOKS_KEY)
    endpoints.remove(second.id)
    # The scripts that make a status final stop marking events for nobody.
    assert not redis_client.exists(WEBHOOKS_KEY)
    with pytest.raises(NotFoundError):
        endpoints.remove(second.id)


def test_an_endpoint_is_tied_only_to_an_existing_key(
    endpoints: EndpointStore, keys: ApiKeyStore
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        endpoints.add("https://a.example.com/", key="scheduler")
    assert raised.value.field == "key"
    keys.create("scheduler", Role.PRODUCER)
    endpoint, _ = endpoints.add("https://a.example.com/", key="scheduler")
    assert endpoint.key == "scheduler"


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def api(outbox_context: OutboxContext) -> Iterator[TestClient]:
    with TestClient(create_app(outbox_context)) as client:
        yield client


def bearer(keys: ApiKeyStore, name: str, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.create(name, role)}"}


def test_the_api_registers_lists_and_removes_endpoints_for_admins_only(
    api: TestClient, keys: ApiKeyStore
) -> None:
    admin = bearer(keys, "ann", Role.ADMIN)
    producer = bearer(keys, "scheduler", Role.PRODUCER)
    body = {"url": "https://hooks.example.com/x", "events": ["sent"], "key": "scheduler"}
    assert api.post("/api/webhooks", json=body, headers=producer).status_code == 403
    assert api.get("/api/webhooks", headers=producer).status_code == 403
    assert api.get("/api/webhooks/deliveries", headers=producer).status_code == 403
    assert api.get("/api/webhooks").status_code == 401

    created = api.post("/api/webhooks", json=body, headers=admin)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["secret"].startswith("whsec_")
    assert (answer["url"], answer["events"], answer["key"]) == (body["url"], ["sent"], "scheduler")

    listed = api.get("/api/webhooks", headers=admin)
    assert listed.json() == [{k: v for k, v in answer.items() if k != "secret"}]
    assert answer["secret"] not in listed.text

    assert api.get("/api/webhooks/deliveries", headers=admin).json() == []
    assert api.delete(f"/api/webhooks/{answer['id']}", headers=admin).status_code == 204
    assert api.delete(f"/api/webhooks/{answer['id']}", headers=admin).status_code == 404
    assert api.get("/api/webhooks", headers=admin).json() == []


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"url": "http://hooks.example.com/x"}, "url", "must be https://"),
        ({"url": "https://a.example.com/", "events": ["opened"]}, "events", "unknown event"),
        ({"url": "https://a.example.com/", "events": []}, "events", "at least one"),
        ({"url": "https://a.example.com/", "key": "nobody"}, "key", "no API key named"),
        ({"events": ["sent"]}, "url", "Field required"),
    ],
)
def test_the_api_refuses_a_bad_endpoint_naming_the_field(
    api: TestClient, keys: ApiKeyStore, body: dict[str, object], field: str, why: str
) -> None:
    refused = api.post("/api/webhooks", json=body, headers=bearer(keys, "ann", Role.ADMIN))
    assert refused.status_code == 422
    assert refused.json()["field"] == field
    assert why in refused.json()["detail"]


# --- the CLI --------------------------------------------------------------------------------


def test_the_cli_adds_lists_and_removes_endpoints(
    outbox_env: dict[str, str], keys: ApiKeyStore
) -> None:
    keys.create("scheduler", Role.PRODUCER)
    added = run_outbox(
        outbox_env,
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--events",
        "sent,failed",
        "--key",
        "scheduler",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    assert endpoint["secret"].startswith("whsec_")
    assert (endpoint["events"], endpoint["key"]) == (["sent", "failed"], "scheduler")

    listed = run_outbox(outbox_env, "webhooks", "list")
    assert listed.returncode == 0
    assert endpoint["id"] in listed.stdout
    assert "http://127.0.0.1:9/hook  sent,failed  key scheduler" in listed.stdout
    assert endpoint["secret"] not in listed.stdout

    refused = run_outbox(outbox_env, "webhooks", "add", "http://hooks.example.com/")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: url: must be https://")

    plain = run_outbox(outbox_env, "webhooks", "add", "https://hooks.example.com/")
    assert plain.returncode == 0
    assert "signing secret (shown only this once): whsec_" in plain.stdout

    removed = run_outbox(outbox_env, "webhooks", "remove", endpoint["id"])
    assert (removed.returncode, removed.stdout.strip()) == (0, f"removed {endpoint['id']}")
    again = run_outbox(outbox_env, "webhooks", "remove", endpoint["id"])
    assert again.returncode == 1
    assert "no webhook endpoint" in again.stderr
    deliveries = run_outbox(outbox_env, "webhooks", "deliveries", "--json")
    assert (deliveries.returncode, json.loads(deliveries.stdout)) == (0, [])


def test_secrets_rotate_covers_the_endpoints_signing_secrets(
    outbox_env: dict[str, str], endpoints: EndpointStore
) -> None:
    secrets = {}
    for url in ("https://a.example.com/hook", "https://b.example.com/hook"):
        added = run_outbox(outbox_env, "webhooks", "add", url, "--json")
        assert added.returncode == 0, added.stderr
        secrets[json.loads(added.stdout)["id"]] = json.loads(added.stdout)["secret"]
    old_key, new_key = outbox_env["OUTBOX_SECRET_KEY"], Fernet.generate_key().decode()
    both = {**outbox_env, "OUTBOX_SECRET_KEY": f"{new_key},{old_key}"}

    rotated = run_outbox(both, "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("re-encrypted 2 stored secrets")
    # The new key alone now reads each one: the receivers keep their secrets.
    new_only = SecretBox([new_key.encode()])
    assert {e.id: new_only.decrypt(e.secret_token) for e in endpoints.list()} == secrets


# --- the dispatcher -------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def mark_final(redis_client: redis.Redis, delivery_id: str, status: str, attempts: int) -> str:
    """What the script that makes a status final writes while endpoints exist."""
    member = f"{delivery_id}:{status}:{attempts}"
    redis_client.zadd(WEBHOOK_EVENTS_KEY, {member: time.time()})
    return member


class DispatcherOptions(TypedDict, total=False):
    """The options of a ``WebhookDispatcher`` that a test may set (the others are the
    context's)."""

    concurrency: int
    poll_seconds: float
    lease_seconds: float
    timeout_seconds: float
    delays: Sequence[float]
    clock: Callable[[], float]


def dispatcher(context: OutboxContext, **options: Unpack[DispatcherOptions]) -> WebhookDispatcher:
    client = context.redis_location.async_client()
    return WebhookDispatcher(
        client,
        context.secret_box,
        webhook_client(context.transport_options.tls.verified),
        retention_seconds=context.settings.retention_seconds,
        **options,
    )


async def run_until(
    dispatch: WebhookDispatcher, done: Callable[[], object], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the dispatcher did not get there"
        await asyncio.sleep(min(await dispatch.step(), 0.05))


def test_each_attempt_is_recorded_and_the_delivery_fails_after_the_schedule(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    receiver.answers = [500]
    endpoint, secret = endpoints.add(receiver.url)
    delivery_id = enqueue(producer, idempotency_key="run-7")
    member = mark_final(redis_client, delivery_id, "failed", 3)
    dispatch = dispatcher(outbox_context, delays=(0.05,) * 7)
    deliveries = WebhookDeliveries(outbox_context.redis)

    asyncio.run(run_until(dispatch, lambda: any(d.status == "failed" for d in deliveries.recent())))
    received = receiver.wait_for(8)
    assert len(received) == 8
    assert {r.headers["webhook-id"] for r in received} == {message_id(member, endpoint.id)}
    for request in received:
        event = Webhook(secret).verify(request.body, request.headers)
    assert event["type"] == event["status"] == "failed"
    assert (event["delivery_id"], event["attempts"], event["idempotency_key"]) == (
        delivery_id,
        3,
        "run-7",
    )
    assert event["recipients"] == [
        {"address": "alice@example.com", "status": "pending", "code": None, "reply": None}
    ]
    assert datetime.fromisoformat(event["timestamp"]).tzinfo == UTC
    assert not redis_client.exists(WEBHOOK_EVENTS_KEY)  # fanned out, then dropped

    [delivery] = deliveries.recent()
    assert (delivery.status, delivery.attempt_count) == ("failed", 8)
    assert [a["status_code"] for a in delivery.attempts] == [500] * 8
    assert delivery.attempts[0]["response"] == "receiver says no"
    assert delivery.last_result == "500: receiver says no"
    assert all(a["duration_ms"] >= 0 for a in delivery.attempts)
    # Finished deliveries expire with the records.
    assert (
        0 < redis_client.ttl(delivery_key(delivery.id)) <= outbox_context.settings.retention_seconds
    )


def test_a_lapsed_lease_is_taken_over_and_the_lost_attempt_recorded(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    endpoint, _ = endpoints.add(receiver.url)
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        first = dispatcher(outbox_context, lease_seconds=1.0)
        second = dispatcher(outbox_context, lease_seconds=1.0)
        await first.fan_out()
        [taken] = await first.take(8)  # ...and then the first process dies mid-send
        assert await second.take(8) == []  # leased: nobody else sends it meanwhile
        await asyncio.sleep(1.1)
        [(msg_id, fields, token)] = await second.take(8)
        assert msg_id == taken[0]
        assert await second.send(msg_id, fields, token) == "delivered"

    asyncio.run(scenario())
    assert len(receiver.wait_for(1)) == 1
    [delivery] = WebhookDeliveries(outbox_context.redis).recent()
    assert delivery.status == "delivered"
    assert delivery.attempts[0]["error"].startswith("the worker was lost")
    assert [a["number"] for a in delivery.attempts] == [1, 2]
    assert not redis_client.zscore(DUE_KEY, delivery.id)
    assert endpoint.id == delivery.endpoint


def test_an_event_of_a_purged_record_is_dropped_and_a_removed_endpoint_gets_nothing(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    endpoint, _ = endpoints.add(receiver.url)
    purged = enqueue(producer)
    redis_client.delete(record_key(purged))
    mark_final(redis_client, purged, "sent", 1)
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        dispatch = dispatcher(outbox_context)
        assert await dispatch.fan_out() == 1
        endpoints.remove(endpoint.id)
        [(msg_id, fields, token)] = await dispatch.take(8)
        assert await dispatch.send(msg_id, fields, token) == "failed"

    asyncio.run(scenario())
    assert receiver.requests == []
    [delivery] = WebhookDeliveries(outbox_context.redis).recent()
    assert (delivery.status, delivery.attempts) == ("failed", ())
    assert delivery.last_result == "its endpoint was removed"
    assert not redis_client.exists(WEBHOOK_EVENTS_KEY)


def test_a_redirect_timeout_and_refused_connection_are_failed_attempts(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    receiver.redirect_to = "https://elsewhere.example.com/steal"
    endpoints.add(receiver.url, "sent")
    endpoints.add("http://127.0.0.1:9/closed", "sent")  # discard port: nothing listens
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        dispatch = dispatcher(outbox_context, timeout_seconds=1.0)
        await dispatch.fan_out()
        for msg_id, fields, token in await dispatch.take(8):
            assert await dispatch.send(msg_id, fields, token) == "retrying"

    asyncio.run(scenario())
    assert len(receiver.requests) == 1  # the redirect was not followed anywhere
    by_url = {d.url: d for d in WebhookDeliveries(outbox_context.redis).recent()}
    [redirected] = by_url[receiver.url].attempts
    assert redirected["status_code"] == 307
    assert redirected["error"] == "redirect to 'https://elsewhere.example.com/steal' not followed"
    [refused] = by_url["http://127.0.0.1:9/closed"].attempts
    assert refused["error"].startswith("could not connect")
    assert by_url[receiver.url].next_attempt_at is not None


def test_410_gone_ends_it_and_retry_after_is_heeded(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    redis_client: redis.Redis,
) -> None:
    with webhook_receiver() as gone, webhook_receiver() as busy:
        gone.answers = [410]
        busy.answers = [503]
        busy.headers = {"Retry-After": "120"}
        endpoints.add(gone.url)
        endpoints.add(busy.url)
        mark_final(redis_client, enqueue(producer), "sent", 1)

        async def scenario() -> None:
            dispatch = dispatcher(outbox_context, delays=(0.05,) * 7)
            await dispatch.fan_out()
            for msg_id, fields, token in await dispatch.take(8):
                await dispatch.send(msg_id, fields, token)

        asyncio.run(scenario())
        by_url = {d.url: d for d in WebhookDeliveries(outbox_context.redis).recent()}
    # The receiver wants no more: not tried again (the specification's advice).
    assert (by_url[gone.url].status, by_url[gone.url].attempt_count) == ("failed", 1)
    # Told to come back in two minutes: not in the schedule's 0.05 s.
    waiting = by_url[busy.url]
    assert waiting.status == "retrying"
    assert waiting.attempts[0]["retry_after"] == 120
    assert waiting.next_attempt_at is not None
    assert 115 < waiting.next_attempt_at - waiting.updated_at <= 120.5


def test_requests_ask_for_no_compression_and_name_outbox(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    endpoints.add(receiver.url)
    mark_final(redis_client, enqueue(producer), "sent", 1)
    dispatch = dispatcher(outbox_context)
    asyncio.run(run_until(dispatch, lambda: receiver.requests))
    [request] = receiver.requests
    # Only the answer's first bytes are kept: a compressed one could inflate without bound.
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["user-agent"].startswith("outbox-webhooks/")


def test_an_unexpected_error_is_a_recorded_attempt_not_a_lost_one(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    redis_client: redis.Redis,
) -> None:
    endpoint, _ = endpoints.add("https://hooks.example.com/")
    # A URL the client refuses only when sending (stored before this version checked it).
    document = json.loads(redis_client.hget(WEBHOOKS_KEY, endpoint.id) or b"{}")
    document["url"] = "https://exa\u00admple.com/"
    redis_client.hset(WEBHOOKS_KEY, endpoint.id, json.dumps(document))
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        dispatch = dispatcher(outbox_context)
        await dispatch.fan_out()
        [(msg_id, fields, token)] = await dispatch.take(8)
        assert await dispatch.send(msg_id, fields, token) == "retrying"

    asyncio.run(scenario())
    [delivery] = WebhookDeliveries(outbox_context.redis).recent()
    [attempt] = delivery.attempts
    assert attempt["error"].startswith("InvalidURL: Invalid IDNA hostname")
    assert delivery.attempt_count == 1


def test_a_late_answer_after_a_takeover_is_kept_but_not_counted(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    endpoints.add(receiver.url)
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        slow = dispatcher(outbox_context, lease_seconds=0.5)
        other = dispatcher(outbox_context, lease_seconds=30.0)
        await slow.fan_out()
        [(msg_id, fields, slow_token)] = await slow.take(8)
        await asyncio.sleep(0.6)  # the slow process' lease lapses ...
        [(_, again, token)] = await other.take(8)  # ... the other takes over
        assert await other.send(msg_id, again, token) == "delivered"
        assert await slow.send(msg_id, fields, slow_token) is None  # its answer comes late

    asyncio.run(scenario())
    [delivery] = WebhookDeliveries(outbox_context.redis).recent()
    assert (delivery.status, delivery.attempt_count) == ("delivered", 2)
    lost, sent, late = delivery.attempts
    assert lost["error"].startswith("the worker was lost")
    assert (sent["status_code"], sent.get("superseded")) == (200, None)
    assert (late["status_code"], late["superseded"]) == (200, True)
    # Finished: the body is no longer kept.
    assert redis_client.hget(delivery_key(delivery.id), "body") is None


def test_a_stopping_worker_hands_its_requests_back_uncharged(
    outbox_context: OutboxContext,
    producer: Producer,
    endpoints: EndpointStore,
    receiver: Receiver,
    redis_client: redis.Redis,
) -> None:
    receiver.hang_seconds = 3
    endpoints.add(receiver.url)
    mark_final(redis_client, enqueue(producer), "sent", 1)

    async def scenario() -> None:
        dispatch = dispatcher(outbox_context)
        await run_until(dispatch, lambda: receiver.requests)
        await dispatch.aclose()

    asyncio.run(scenario())
    [delivery] = WebhookDeliveries(outbox_context.redis).recent()
    assert (delivery.status, delivery.attempt_count, delivery.attempts) == ("retrying", 0, ())
    assert delivery.last_result == "the worker stopped"
    assert delivery.next_attempt_at is not None
    assert delivery.next_attempt_at <= delivery.updated_at + 0.01  # due at once
