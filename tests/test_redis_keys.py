"""The key registry stays true: after a full cycle of outbox (settings, API keys, page sessions,
sends, retries, a provider's pause, scheduled and cancelled sends, reports, webhooks, sending
and key limits) through the ``outbox worker`` command, every key in Redis is one it describes,
of the type it says; and docs/redis-keys.md is the registry rendered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from fastapi.testclient import TestClient

from api.app import create_app
from config import redis_keys
from config.api_keys import ApiKeyStore, KeyLimits, Role
from config.mail_settings import SmtpSettings, TlsMode
from config.redis_keys import REGISTRY, KeyType, describing, markdown_table
from peers.processes import Service, run_outbox
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tests.support.environment import context_of, fresh_environment
from tests.support.webhook_receiver import Receiver, webhook_receiver
from worker.records import DeliveryStatus, attempts_key, idempotency_key, record_key
from worker.records.codec import as_text
from worker.webhooks import EndpointStore

ROOT = Path(__file__).resolve().parents[1]
LATER = "later@example.com"  # deferred (451) at every attempt: retried, then failed
THROTTLED = "busy@example.com"  # the provider's rate quota (4.3.2): the account pauses


def test_the_documentation_table_is_the_registry_rendered() -> None:
    documented = (ROOT / "docs" / "redis-keys.md").read_text()
    assert documented == markdown_table(), "run: python -m config.redis_keys > docs/redis-keys.md"


def test_every_key_builder_names_a_key_its_entry_describes() -> None:
    assert redis_keys.RECORD.matches(record_key("0" * 32))
    assert redis_keys.ATTEMPTS.matches(attempts_key("0" * 32))
    assert redis_keys.IDEMPOTENCY.matches(idempotency_key("run:42:a"))
    assert redis_keys.KEY_IDEMPOTENCY.matches(idempotency_key("run:42:a", owner="ci"))
    assert not redis_keys.RECORD.matches(attempts_key("0" * 32))  # one entry per kind of key
    patterns = [entry.pattern for entry in REGISTRY]
    assert len(patterns) == len(set(patterns))


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    # A database of its own, emptied: every key in it afterwards is this cycle's.
    return fresh_environment(
        redis_server.url.removesuffix("/0") + "/9",
        tmp_path_factory.mktemp("keys"),
        certificate_authority,
        OUTBOX_MAX_ATTEMPTS="3",
    )


@pytest.fixture(scope="module")
def context(env: dict[str, str]) -> OutboxContext:
    return context_of(env)


@pytest.fixture(scope="module")
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def settings_for(peer: SmtpPeer, per_minute: int) -> SmtpSettings:
    return SmtpSettings(
        server=peer.host,
        port=peer.port,
        from_mailbox="robot@example.com",
        tls=TlsMode.NONE,
        max_messages_per_minute=per_minute,
        max_recipients_per_day=1000,
    )


def wait_until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        time.sleep(0.1)


def keys_in(client: redis.Redis) -> dict[str, KeyType]:
    """Every key in the database and its type, as SCAN and TYPE answer."""
    found: dict[str, KeyType] = {}
    for raw in client.scan_iter(count=1000):
        kind = client.type(raw)
        if kind != b"none":  # expired between SCAN and TYPE
            found[raw.decode()] = KeyType(as_text(kind))
    return found


def full_cycle(
    context: OutboxContext, env: dict[str, str], peer: SmtpPeer, receiver: Receiver
) -> list[str]:
    """Use every part of outbox once, as its users do; the ids of the e-mails it sent."""
    context.settings_store.save(settings_for(peer, per_minute=500))
    context.settings_store.save(settings_for(peer, per_minute=600), by="ann")  # a history
    keys = ApiKeyStore(context.redis)
    admin = keys.create("ann", Role.ADMIN)
    producer = keys.create("ci", Role.PRODUCER, KeyLimits.of(max_per_minute=100, max_per_day=10))
    endpoints = EndpointStore(
        context.redis, context.secret_box, key_exists=lambda name: keys.holder(name) is not None
    )
    endpoints.add(receiver.url)
    peer.rcpt_replies[THROTTLED] = "452 4.3.2 throttled, slow down"
    peer.rcpt_replies[LATER] = "451 4.2.0 try later"  # every time: retried, then failed
    sent: list[str] = []
    service = Service(["outbox", "worker"], env)
    try:
        service.wait_for_output(" ready.")
        with TestClient(create_app(context)) as api:
            producing = {"Authorization": f"Bearer {producer}"}
            signed_in = api.post("/signin", data={"key": admin}, follow_redirects=False)
            assert signed_in.status_code == 303, signed_in.text
            assert api.get(
                "/api/settings/mail", headers={"Authorization": f"Bearer {admin}"}
            ).is_success
            for to, key in [("a@example.com", "run:1:a"), (LATER, "run:1:b")]:
                body = {"to": [to], "subject": "Hi", "text": "x", "idempotency_key": key}
                answer = api.post("/api/emails", json=body, headers=producing)
                assert answer.status_code == 202, answer.text
                sent.append(answer.json()["id"])
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            scheduled = {"to": ["b@example.com"], "subject": "Later", "send_at": later}
            api.post("/api/emails", json={**scheduled, "text": "x"}, headers=producing)
            cancelled = api.post("/api/emails", json={**scheduled, "text": "y"}, headers=producing)
            assert api.delete(f"/api/emails/{cancelled.json()['id']}", headers=producing).is_success
            admin_headers = {"Authorization": f"Bearer {admin}"}
            notification = {"name": "Nightly", "lists": [{"rule": "always", "to": ["qa@x.org"]}]}
            api.put("/api/schedules/nightly/notification", headers=admin_headers, json=notification)
            run = {
                "schedule_id": "nightly",
                "schedule_name": "Nightly",
                "run_id": "r-1",
                "started_at": "2026-12-01T01:00:00Z",
                "finished_at": "2026-12-01T01:10:00Z",
                "status": "passed",
                "items": [],
            }
            posted = api.post("/api/schedules/nightly/runs", headers=producing, json=run)
            assert posted.status_code == 202, posted.text
            sent += [found["delivery_id"] for found in posted.json()["lists"] if found["matched"]]
        paused = run_outbox(
            env, "send", "--to", THROTTLED, "--subject", "Paused", "--text", "x",
            "--idempotency-key", "cli:1", "--json",
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        sent.append(json.loads(paused.stdout)["id"])
        # The pause is the provider's: once it was met, the provider takes the e-mail.
        wait_until(lambda: context.deliveries.get(sent[-1]).attempt_count >= 1, "attempted")
        del peer.rcpt_replies[THROTTLED]
        wait_until(lambda: all(context.deliveries.get(i).status.is_final for i in sent), "final")
        wait_until(lambda: len(receiver.requests) >= len(sent), "announced")
    finally:
        service.stop()
    return sent


def test_after_a_full_cycle_every_key_in_redis_is_described(
    context: OutboxContext, env: dict[str, str], peer: SmtpPeer, receiver: Receiver
) -> None:
    sent = full_cycle(context, env, peer, receiver)
    statuses = {context.deliveries.get(i).status for i in sent}
    assert DeliveryStatus.SENT in statuses

    found = keys_in(context.redis)
    undescribed = {key: kind for key, kind in found.items() if describing(key, kind) is None}
    assert not undescribed, f"keys no entry of config/redis_keys.py describes: {undescribed}"
    # The cycle reached every part whose keys outlive it: the registry describes what is
    # there, and what is there covers the registry's lasting keys.
    seen = {entry.pattern for key, kind in found.items() if (entry := describing(key, kind))}
    lasting = {
        redis_keys.SETTINGS_HISTORY, redis_keys.API_KEYS_LAST_USED, redis_keys.SESSION,
        redis_keys.SESSIONS_OF, redis_keys.KEY_QUOTA, redis_keys.KEY_IDEMPOTENCY,
        redis_keys.KEY_DELIVERIES, redis_keys.SCHEDULE, redis_keys.SCHEDULE_LAST,
        redis_keys.SCHEDULE_RUN, redis_keys.SCHEDULES, redis_keys.WEBHOOK_DELIVERY,
        redis_keys.WEBHOOK_RECENT, redis_keys.LIMIT_DAY, redis_keys.WAIT_COUNTERS,
        redis_keys.ATTEMPT_COUNTERS, redis_keys.ATTEMPTS, redis_keys.DUE,
    }  # fmt: skip
    assert {entry.pattern for entry in lasting} <= seen
