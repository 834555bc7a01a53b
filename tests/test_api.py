"""The HTTP API in process (FastAPI's TestClient) against the real Redis and real SMTP peers:
who may call what, what never leaves it, and the errors that name their field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from fastapi.testclient import TestClient
from redis import Redis

from api.app import create_app
from api.auth import CSRF_HEADER
from config.api_keys import ApiKeyStore, Role
from config.redis_location import RedisLocation
from peers.redis_server import free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.queues import QUEUE
from worker.records import DeliveryStatus, status_index_key

PASSWORD = "api-Secret-Pa55word"
CLIENT_SECRET = "graph-Client-Secret-value"
PUBLIC = {"/healthz", "/readyz", "/metrics"}


class RecordingClient(TestClient):
    """A TestClient that keeps every body it received, to scan them all for secrets."""

    bodies: list[str]

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = super().request(*args, **kwargs)
        self.bodies.append(response.text)
        return response


@pytest.fixture
def client(outbox_context: OutboxContext) -> Iterator[RecordingClient]:
    with RecordingClient(create_app(outbox_context)) as running:
        running.bodies = []
        yield running
    for body in running.bodies:
        assert PASSWORD not in body
        assert CLIENT_SECRET not in body


@pytest.fixture
def keys(outbox_context: OutboxContext) -> ApiKeyStore:
    return ApiKeyStore(outbox_context.redis)


@pytest.fixture
def admin(keys: ApiKeyStore) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.create('ann', Role.ADMIN)}"}


@pytest.fixture
def producer(keys: ApiKeyStore) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.create('scheduler', Role.PRODUCER)}"}


@pytest.fixture
def peer(server_certificate: trustme.LeafCert) -> Iterator[SmtpPeer]:
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={"robot": PASSWORD}
    ) as running:
        yield running


def smtp_form(peer: SmtpPeer, **changes: Any) -> dict[str, Any]:
    return {
        "protocol": "smtp",
        "server": peer.host,
        "port": peer.port,
        "from_mailbox": "robot@example.com",
        "username": "robot",
        "password": PASSWORD,
        "tls": "starttls",
        **changes,
    }


def _fill(path: str, values: dict[str, str]) -> str:
    for parameter, value in values.items():
        path = path.replace(parameter, value)
    assert "{" not in path, f"give {path}'s parameter a value here"
    return path


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation the OpenAPI document lists, but the health endpoints."""
    paths = client.get("/openapi.json").json()["paths"]
    filled = {
        "{delivery_id}": "0" * 32,
        "{name}": "nobody",
        "{schedule_id}": "nightly",
        "{endpoint_id}": "ep_" + "0" * 16,
    }
    return [
        (method.upper(), _fill(path, filled))
        for path, operations in paths.items()
        if path not in PUBLIC
        for method in operations
    ]


def test_every_endpoint_but_health_needs_a_key(client: RecordingClient) -> None:
    routes = api_routes(client)
    assert len(routes) >= 12
    for method, path in routes:
        answer = client.request(method, path)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        bad_key = {"Authorization": "Bearer obx_not-a-key"}
        assert client.request(method, path, headers=bad_key).status_code == 401
    assert client.get("/healthz").json() == {"status": "ok"}


def test_producers_may_send_and_read_but_not_touch_settings_keys_webhooks_or_retry(
    client: RecordingClient, producer: dict[str, str], admin: dict[str, str]
) -> None:
    for method, path in api_routes(client):
        as_producer = client.request(method, path, headers=producer)
        admin_only = (
            path.startswith(("/api/settings", "/api/keys", "/api/webhooks"))
            or "retry" in path
            or path.endswith("/notification")
        )
        if admin_only:
            assert as_producer.status_code == 403, (method, path)
            assert "admin" in as_producer.json()["detail"]
        else:
            assert as_producer.status_code not in (401, 403), (method, path)
        assert client.request(method, path, headers=admin).status_code not in (401, 403)


def test_a_revoked_key_stops_at_once(
    client: RecordingClient, keys: ApiKeyStore, producer: dict[str, str]
) -> None:
    assert client.get("/api/emails", headers=producer).status_code == 200
    keys.revoke("scheduler")
    assert client.get("/api/emails", headers=producer).status_code == 401


def test_a_revoked_key_enqueues_nothing_more_at_once(
    client: RecordingClient, keys: ApiKeyStore, producer: dict[str, str], redis_client: Redis
) -> None:
    # The enqueue route believes a key looked up less than a second ago, and checks it again
    # in the script that stores the record: revoked in between, nothing is stored.
    email = {"to": ["a@example.com"], "subject": "s", "text": "t"}
    assert client.post("/api/emails", headers=producer, json=email).status_code == 202
    queued = redis_client.zcard(status_index_key(DeliveryStatus.QUEUED))
    keys.revoke("scheduler")
    refused = client.post("/api/emails", headers=producer, json=email)
    assert refused.status_code == 401, refused.text
    assert redis_client.zcard(status_index_key(DeliveryStatus.QUEUED)) == queued
    assert redis_client.llen(QUEUE) == queued


def test_a_key_limited_meanwhile_is_counted_at_once(
    client: RecordingClient, keys: ApiKeyStore, producer: dict[str, str]
) -> None:
    email = {"to": ["a@example.com"], "subject": "s", "text": "t"}
    assert client.post("/api/emails", headers=producer, json=email).status_code == 202
    keys.update("scheduler", allowed_domains=["example.org"])
    refused = client.post("/api/emails", headers=producer, json=email)
    assert (refused.status_code, refused.json()["field"]) == (422, "to[0]")
    keys.update("scheduler", allowed_domains=[], max_per_minute=1)
    assert client.post("/api/emails", headers=producer, json=email).status_code == 202
    assert client.post("/api/emails", headers=producer, json=email).status_code == 429
    used = {info.name: info.last_used_at for info in keys.list()}["scheduler"]
    assert used is not None


def test_settings_are_saved_without_ever_returning_a_secret(
    client: RecordingClient, admin: dict[str, str], peer: SmtpPeer, outbox_context: OutboxContext
) -> None:
    assert client.get("/api/settings/mail", headers=admin).status_code == 404
    saved = client.put("/api/settings/mail", headers=admin, json=smtp_form(peer))
    assert saved.status_code == 200, saved.text
    view = saved.json()
    assert (view["version"], view["password_set"], view["username"]) == (1, True, "robot")
    assert "password" not in view

    # The form left the password empty: the stored one is kept.
    kept = client.put("/api/settings/mail", headers=admin, json=smtp_form(peer, password=""))
    assert kept.json()["password_set"] is True
    stored = outbox_context.settings_store.require().settings.secret()
    assert stored is not None
    assert stored.get_secret_value() == PASSWORD

    oauth = {
        "protocol": "oauth",
        "from_mailbox": "robot@contoso.com",
        "tenant": "contoso",
        "client_id": "app",
        "client_secret": CLIENT_SECRET,
    }
    view = client.put("/api/settings/mail", headers=admin, json=oauth).json()
    assert view["client_secret_set"] is True
    assert view["instance"] == "https://login.microsoftonline.com/"
    history = client.get("/api/settings/mail/history", headers=admin).json()
    assert [(h["version"], h["by"]) for h in history] == [(3, "ann"), (2, "ann"), (1, "ann")]
    assert "client_secret" in history[0]["changed"]
    assert history[1]["changed"] == []


def test_defaults_are_the_pre_filled_values(client: RecordingClient, admin: dict[str, str]) -> None:
    smtp = client.get("/api/settings/mail/defaults", headers=admin).json()
    assert smtp == {
        "protocol": "smtp",
        "server": "localhost",
        "port": 587,
        "username": None,
        "accept_any_certificate": False,
        "tls": "auto",
        "auth": "password",
        "tenant": None,
        "client_id": None,
        "instance": "https://login.microsoftonline.com/",
        "scope": "https://outlook.office365.com/.default",
        "max_messages_per_minute": None,
        "max_recipients_per_day": None,
        "max_recipients_per_message": None,
        "delivery_mode": "deliver",
        "redirect_to": [],
    }
    oauth = client.get("/api/settings/mail/defaults?protocol=oauth", headers=admin).json()
    assert oauth["instance"] == "https://login.microsoftonline.com/"
    assert oauth["api_url"] == "https://graph.microsoft.com/"
    # Graph sends from an Exchange Online mailbox: its published limits are pre-filled.
    assert (oauth["max_messages_per_minute"], oauth["max_recipients_per_day"]) == (30, 10_000)


@pytest.mark.parametrize(
    ("server", "per_minute", "per_day", "per_message"),
    [
        ("smtp.office365.com", 30, 10_000, 500),
        ("SMTP.Gmail.com", None, 2_000, 100),
        ("smtp-relay.gmail.com", None, 10_000, 100),
        ("mail.example.com", None, None, None),
    ],
)
def test_defaults_pre_fill_a_known_providers_published_limits(
    client: RecordingClient,
    admin: dict[str, str],
    server: str,
    per_minute: int | None,
    per_day: int | None,
    per_message: int | None,
) -> None:
    smtp = client.get(f"/api/settings/mail/defaults?server={server}", headers=admin).json()
    assert smtp["server"] == server
    assert (
        smtp["max_messages_per_minute"],
        smtp["max_recipients_per_day"],
        smtp["max_recipients_per_message"],
    ) == (per_minute, per_day, per_message)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 0}, "port"),
        ({"server": "not a host"}, "server"),
        ({"from_mailbox": "robot"}, "from_mailbox"),
        ({"tls": "sometimes"}, "tls"),
        ({"auth": "oauth2"}, "tenant"),
        ({"auth": "oauth2", "tenant": "t"}, "client_id"),
        ({"auth": "kerberos"}, "auth"),
        ({"max_messages_per_minute": 0}, "max_messages_per_minute"),
        ({"max_recipients_per_message": -1}, "max_recipients_per_message"),
        ({"auth": "oauth2", "tenant": "t", "client_id": "c", "scope": "a b"}, "scope"),
        ({"auth": "oauth2", "tenant": "t", "client_id": "c", "instance": "http://x/"}, "instance"),
    ],
)
def test_invalid_settings_name_the_field(
    client: RecordingClient,
    admin: dict[str, str],
    peer: SmtpPeer,
    change: dict[str, Any],
    field: str,
) -> None:
    answer = client.put("/api/settings/mail", headers=admin, json=smtp_form(peer, **change))
    assert answer.status_code == 422
    assert answer.json()["field"] == field
    assert answer.json()["detail"].startswith(f"{field}: ")


def test_checks_use_the_unsaved_form_and_say_why_they_fail(
    client: RecordingClient, admin: dict[str, str], peer: SmtpPeer
) -> None:
    checked = client.post(
        "/api/settings/mail/test-connection", headers=admin, json=smtp_form(peer)
    ).json()
    assert checked == {"ok": True, "message": f"connected to {peer.host}:{peer.port} as robot"}
    wrong = client.post(
        "/api/settings/mail/test-connection",
        headers=admin,
        json=smtp_form(peer, password="wrong-password"),
    ).json()
    assert wrong["ok"] is False
    assert "535" in wrong["message"]

    sent = client.post("/api/settings/mail/test-email", headers=admin, json=smtp_form(peer))
    assert sent.json() == {"ok": True, "message": "test e-mail sent to robot@example.com"}
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == ("robot@example.com",)


def test_emails_are_queued_listed_and_read(
    client: RecordingClient, producer: dict[str, str], outbox_context: OutboxContext
) -> None:
    answer = client.post(
        "/api/emails",
        headers=producer,
        json={
            "to": ["alice@example.com"],
            "subject": "Nightly",
            "text": "ok",
            "attachments": [
                {"name": "r.txt", "content_type": "text/plain", "content_base64": "b2sK"}
            ],
        },
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"].endswith(f"/api/emails/{accepted['id']}")
    summary = client.get(accepted["status_url"], headers=producer).json()
    assert (summary["subject"], summary["status"]) == ("Nightly", "queued")
    assert summary["recipients"][0]["address"] == "alice@example.com"
    assert client.get("/api/emails/" + "f" * 32, headers=producer).status_code == 404


def test_invalid_emails_name_the_field(client: RecordingClient, producer: dict[str, str]) -> None:
    bad = client.post(
        "/api/emails", headers=producer, json={"to": ["a@example.com", "nope"], "subject": "s"}
    )
    assert bad.status_code == 422
    assert bad.json()["field"] == "to[1]"
    no_subject = client.post("/api/emails", headers=producer, json={"to": ["a@example.com"]})
    assert no_subject.json()["field"] == "subject"
    bad_key = client.post(
        "/api/emails",
        headers={**producer, "Idempotency-Key": "has space"},
        json={"to": ["a@example.com"], "subject": "s"},
    )
    assert (bad_key.status_code, bad_key.json()["field"]) == (422, "Idempotency-Key")


def test_a_batch_reports_each_item(client: RecordingClient, producer: dict[str, str]) -> None:
    answer = client.post(
        "/api/emails/batch",
        headers=producer,
        json=[
            {"to": ["a@example.com"], "subject": "one"},
            {"to": ["broken"], "subject": "two"},
            {"to": ["c@example.com"], "subject": "three", "idempotency_key": "k-3"},
        ],
    )
    assert answer.status_code == 200, answer.text
    first, second, third = answer.json()
    assert (first["index"], first["status"]) == (0, "queued")
    assert (second["index"], second["field"]) == (1, "to[0]")
    assert "id" not in second
    assert third["created"] is True
    again = client.post(
        "/api/emails/batch",
        headers=producer,
        json=[{"to": ["c@example.com"], "subject": "three", "idempotency_key": "k-3"}],
    ).json()
    assert (again[0]["id"], again[0]["created"]) == (third["id"], False)


def test_pages_of_a_batch_enqueued_at_one_instant(
    client: RecordingClient, producer: dict[str, str]
) -> None:
    client.post(
        "/api/emails/batch",
        headers=producer,
        json=[{"to": ["a@example.com"], "subject": f"m{i}"} for i in range(5)],
    )
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/emails", headers=producer, params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    assert client.get("/api/emails?cursor=junk", headers=producer).json()["field"] == "cursor"
    queued = client.get("/api/emails?status=queued&limit=10", headers=producer).json()
    assert len(queued["items"]) == 5
    assert client.get("/api/emails?status=lost", headers=producer).json()["field"] == "status"


def test_the_page_session_needs_its_csrf_token(
    client: RecordingClient, keys: ApiKeyStore, peer: SmtpPeer
) -> None:
    key = keys.create("ann", Role.ADMIN)
    wrong = client.post("/signin", data={"key": "obx_wrong"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text

    signed_in = client.post("/signin", data={"key": key}, follow_redirects=False)
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    page = client.get("/settings/mail")
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]

    assert client.get("/api/settings/mail/defaults").status_code == 200  # reading is safe
    forged = client.put("/api/settings/mail", json=smtp_form(peer))
    assert forged.status_code == 403
    assert CSRF_HEADER in forged.json()["detail"]
    saved = client.put("/api/settings/mail", json=smtp_form(peer), headers={CSRF_HEADER: csrf})
    assert saved.status_code == 200

    client.post("/signout", data={"csrf_token": csrf})
    assert client.get("/api/settings/mail/defaults").status_code == 401


def test_a_producer_key_cannot_sign_in(client: RecordingClient, keys: ApiKeyStore) -> None:
    key = keys.create("scheduler", Role.PRODUCER)
    refused = client.post("/signin", data={"key": key}, follow_redirects=False)
    assert refused.status_code == 403
    assert "only an admin key can sign in" in refused.text
    assert "set-cookie" not in refused.headers


def test_revoking_the_key_ends_its_sessions(client: RecordingClient, keys: ApiKeyStore) -> None:
    key = keys.create("ann", Role.ADMIN)
    client.post("/signin", data={"key": key})
    assert client.get("/api/emails").status_code == 200
    keys.revoke("ann")
    assert client.get("/api/emails").status_code == 401


def test_metrics_and_readiness_without_a_key(
    client: RecordingClient, producer: dict[str, str]
) -> None:
    client.post("/api/emails", headers=producer, json={"to": ["a@x.org"], "subject": "s"})
    client.post(
        "/api/emails",
        headers=producer,
        json={"to": ["a@x.org"], "subject": "s", "priority": "high"},
    )
    metrics = client.get("/metrics").text
    assert 'outbox_deliveries{status="queued"} 2.0' in metrics
    assert 'outbox_attempts_total{outcome="sent"} 0.0' in metrics
    assert 'outbox_queue_tasks{priority="high"} 1.0' in metrics
    assert 'outbox_queue_tasks{priority="normal"} 1.0' in metrics
    assert 'outbox_queue_tasks{priority="low"} 0.0' in metrics
    assert "outbox_oldest_queued_seconds" in metrics
    not_ready = client.get("/readyz")  # Redis is up, but no worker runs in this test
    assert not_ready.status_code == 503
    assert not_ready.json() == {"ready": False, "redis": True, "workers": 0}


def test_an_unreachable_redis_answers_503_naming_it(outbox_context: OutboxContext) -> None:
    port = free_port()
    cut_off = OutboxContext(
        outbox_context.settings, RedisLocation(f"redis://:pw@127.0.0.1:{port}/0")
    )
    with TestClient(create_app(cut_off)) as client:
        answer = client.get("/api/emails", headers={"Authorization": "Bearer obx_any"})
    assert answer.status_code == 503
    assert answer.json()["detail"] == (
        f"Redis at 127.0.0.1:{port} is unreachable or not answering (ConnectionError)"
    )


def test_accepting_any_certificate_is_said_when_saved_and_checked(
    client: RecordingClient, admin: dict[str, str], peer: SmtpPeer
) -> None:
    weakened = smtp_form(peer, accept_any_certificate=True)
    saved = client.put("/api/settings/mail", headers=admin, json=weakened).json()
    [warning] = saved["warnings"]
    assert warning.startswith("accept any certificate is on")
    assert f"{peer.host}:{peer.port}" in warning
    checked = client.post("/api/settings/mail/test-connection", headers=admin, json=weakened).json()
    assert checked["ok"] is True
    assert "not verified" in checked["message"]
    verified = client.put("/api/settings/mail", headers=admin, json=smtp_form(peer)).json()
    assert verified["warnings"] == []
