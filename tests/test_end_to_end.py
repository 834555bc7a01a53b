"""End to end: the Procfile's worker, Flower and API (run by honcho), the outbox CLI and HTTP,
real Redis, SMTP and Graph peers."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from peers.graph_standin import GraphStandIn
from peers.processes import ROOT, Service, run_outbox
from peers.redis_server import RedisServer, free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.support.cli_settings import configure_smtp
from tests.support.environment import fresh_environment

USER, PASSWORD = "robot", "e2e-Secret-Pa55"


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    return fresh_environment(
        redis_server.url,
        tmp_path_factory.mktemp("e2e"),
        certificate_authority,
        OUTBOX_RETRY_BASE_SECONDS="0.5",
        OUTBOX_MAX_ATTEMPTS="3",
        OUTBOX_FLOWER_PORT=str(free_port()),
        OUTBOX_API_PORT=str(free_port()),
        FLOWER_UNAUTHENTICATED_API="true",
    )


@pytest.fixture(scope="module")
def peer(server_certificate: trustme.LeafCert) -> Iterator[SmtpPeer]:
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={USER: PASSWORD}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def services(env: dict[str, str]) -> Iterator[Service]:
    """``honcho start`` on the project's Procfile: worker, Flower and API, as `make run` does."""
    service = Service(["honcho", "start", "-f", str(ROOT / "Procfile")], env)
    try:
        service.wait_for_output(" ready.", "Visit me at", "Uvicorn running on")
        yield service
    finally:
        service.stop()


def configure(env: dict[str, str], peer: SmtpPeer, password: str) -> None:
    configure_smtp(env, peer, USER, password)


def status_of(env: dict[str, str], delivery_id: str) -> dict[str, object]:
    result = run_outbox(env, "status", delivery_id, "--json")
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def test_settings_are_checked_and_shown_masked(env: dict[str, str], peer: SmtpPeer) -> None:
    configure(env, peer, PASSWORD)
    shown = run_outbox(env, "settings", "show", "--json")
    assert shown.returncode == 0
    view = json.loads(shown.stdout)
    assert (view["password_set"], view["username"]) == (True, USER)
    assert "password" not in view
    assert PASSWORD not in shown.stdout

    checked = run_outbox(env, "settings", "test-connection")
    assert (checked.returncode, checked.stdout.strip()) == (
        0,
        f"connection OK: connected to {peer.host}:{peer.port} as {USER}",
    )
    before = len(peer.messages)
    sent = run_outbox(env, "settings", "send-test")
    assert sent.returncode == 0, sent.stderr
    [test_mail] = peer.wait_for_messages(before + 1)[before:]
    assert test_mail.rcpt_tos == ("robot@example.com",)


def test_send_wait_reports_sent(env: dict[str, str], peer: SmtpPeer, services: Service) -> None:
    configure(env, peer, PASSWORD)
    before = len(peer.messages)
    result = run_outbox(
        env,
        "send",
        "--to",
        "alice@example.com",
        "--subject",
        "Nightly run",
        "--text",
        "42 passed",
        "--wait",
        "30",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    delivery_id, final = result.stdout.split()
    assert final == "sent"
    assert len(peer.wait_for_messages(before + 1)) == before + 1
    summary = status_of(env, delivery_id)
    assert summary["status"] == "sent"
    assert summary["subject"] == "Nightly run"
    assert summary["recipients"] == [
        {"address": "alice@example.com", "status": "sent", "code": 250, "reply": "accepted"}
    ]
    for field in ("id", "attempts", "created_at", "updated_at", "last_error"):
        assert field in summary


def test_same_idempotency_key_sends_once(
    env: dict[str, str], peer: SmtpPeer, services: Service
) -> None:
    configure(env, peer, PASSWORD)
    before = len(peer.messages)
    args = [
        "send",
        "--to",
        "alice@example.com",
        "--subject",
        "Once",
        "--text",
        "x",
        "--idempotency-key",
        "schedule-7-run-99",
        "--wait",
        "30",
    ]
    first = run_outbox(env, *args)
    second = run_outbox(env, *args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split()[0] == second.stdout.split()[0]
    time.sleep(1)
    assert len(peer.messages) == before + 1


def test_failures_are_retried_after_the_settings_are_fixed(
    env: dict[str, str], peer: SmtpPeer, services: Service
) -> None:
    configure(env, peer, "not-the-password")
    failed = run_outbox(
        env, "send", "--to", "bob@example.com", "--subject", "Broken", "--text", "x", "--wait", "30"
    )
    assert failed.returncode == 1
    delivery_id = failed.stdout.split()[0]
    summary = status_of(env, delivery_id)
    assert summary["status"] == "failed"
    assert "535" in str(summary["last_error"])
    assert "not-the-password" not in json.dumps(summary)

    configure(env, peer, PASSWORD)
    retried = run_outbox(env, "retry", "--all-failed")
    assert retried.returncode == 0
    assert f"requeued {delivery_id}" in retried.stdout
    deadline = time.monotonic() + 30
    while status_of(env, delivery_id)["status"] != "sent":
        assert time.monotonic() < deadline, status_of(env, delivery_id)
        time.sleep(0.2)


def test_flower_lists_send_tasks_without_content_or_secrets(
    env: dict[str, str], peer: SmtpPeer, services: Service
) -> None:
    configure(env, peer, PASSWORD)
    result = run_outbox(
        env,
        "send",
        "--to",
        "dora@example.com",
        "--subject",
        "Private subject",
        "--text",
        "x",
        "--wait",
        "30",
    )
    delivery_id = result.stdout.split()[0]
    url = f"http://127.0.0.1:{env['OUTBOX_FLOWER_PORT']}/api/tasks?taskname=outbox.send"
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        tasks = json.loads(body)
        mine = [t for t in tasks.values() if delivery_id in str(t.get("args"))]
        if mine and mine[0].get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert mine[0]["result"] == "'sent'"
    for secret_or_content in ("dora@example.com", "Private subject", PASSWORD, "robot@example.com"):
        assert secret_or_content not in body


def test_cli_exit_codes(env: dict[str, str]) -> None:
    bad = run_outbox(env, "send", "--to", "not-an-address", "--subject", "s", "--text", "x")
    assert bad.returncode == 2
    assert "to[0]" in bad.stderr
    missing = run_outbox(env, "status", "0" * 32)
    assert missing.returncode == 1
    assert "no delivery" in missing.stderr
    usage = run_outbox(env, "retry")
    assert usage.returncode == 2


@pytest.fixture(scope="module")
def graph(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(server_certificate) as running:
        yield running


def configure_oauth(env: dict[str, str], graph: GraphStandIn, secret: str) -> None:
    result = run_outbox(
        env,
        "settings",
        "set",
        "oauth",
        "--from-mailbox",
        "robot@contoso.com",
        "--tenant",
        "contoso-tenant",
        "--client-id",
        "app-client-id",
        "--client-secret-stdin",
        "--instance",
        graph.base_url,
        "--api-url",
        graph.base_url,
        stdin=secret + "\n",
    )
    assert result.returncode == 0, result.stderr


def test_graph_validate_and_send_through_the_running_worker(
    env: dict[str, str], peer: SmtpPeer, graph: GraphStandIn, services: Service, tmp_path: Path
) -> None:
    configure(env, peer, PASSWORD)  # the worker is sending over SMTP ...
    assert (
        run_outbox(
            env, "send", "--to", "a@example.com", "--subject", "smtp", "--text", "x", "--wait", "30"
        ).returncode
        == 0
    )

    configure_oauth(env, graph, "wrong-secret-value")  # ... switched to Graph, no restart
    refused = run_outbox(env, "settings", "test-connection")
    assert refused.returncode == 1
    assert "invalid_client" in refused.stderr
    assert "wrong-secret-value" not in refused.stderr
    configure_oauth(env, graph, "app-secret-value")
    validated = run_outbox(env, "settings", "test-connection")
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("connection OK: token acquired")

    line = {
        "to": ["alice@example.com"],
        "cc": ["bob@example.com"],
        "bcc": ["carol@example.com"],
        "subject": "Through Graph",
        "text": "body text",
        "html": "<p>body html</p>",
        "reply_to": ["replies@example.com"],
        "headers": {"X-Flow": "checkout"},
        "attachments": [
            {"name": "r.csv", "content_type": "text/csv", "content_base64": "YSxiCjEsMgo="}
        ],
    }
    batch = tmp_path / "graph.jsonl"
    batch.write_text(json.dumps(line) + "\n")
    queued = run_outbox(env, "send", "--batch", str(batch))
    assert queued.returncode == 0, queued.stderr
    delivery_id = queued.stdout.strip()
    deadline = time.monotonic() + 30
    while status_of(env, delivery_id)["status"] != "sent":
        assert time.monotonic() < deadline, status_of(env, delivery_id)
        time.sleep(0.2)
    [message] = [m for m in graph.sent_messages() if m["subject"] == "Through Graph"]
    assert message["toRecipients"] == [{"emailAddress": {"address": "alice@example.com"}}]
    assert message["ccRecipients"] == [{"emailAddress": {"address": "bob@example.com"}}]
    assert message["bccRecipients"] == [{"emailAddress": {"address": "carol@example.com"}}]
    assert message["replyTo"] == [{"emailAddress": {"address": "replies@example.com"}}]
    assert message["body"] == {"contentType": "HTML", "content": "<p>body html</p>"}
    assert message["internetMessageHeaders"] == [{"name": "X-Flow", "value": "checkout"}]
    assert message["attachments"] == [
        {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": "r.csv",
            "contentType": "text/csv",
            "contentBytes": "YSxiCjEsMgo=",
        }
    ]
    sent_test = run_outbox(env, "settings", "send-test")
    assert sent_test.returncode == 0, sent_test.stderr
    assert any(m["subject"] == "outbox test e-mail" for m in graph.sent_messages())


@pytest.fixture(scope="module")
def api(env: dict[str, str], services: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{env['OUTBOX_API_PORT']}", timeout=30) as client:
        yield client


def test_the_console_shows_a_newcomer_how_to_sign_in(
    env: dict[str, str], services: Service, api: httpx.Client
) -> None:
    # honcho prefixes each line with the process name: the key and the URL are lines apart.
    printed = re.search(r"(obx_\S+).*?Sign in with it at (http://\S+)", services.output, re.S)
    assert printed, services.output
    key, url = printed.groups()
    assert url == f"http://127.0.0.1:{env['OUTBOX_API_PORT']}/"
    page = api.post("/signin", data={"key": key}, follow_redirects=True)
    assert page.status_code == 200
    assert "Mail Settings" in page.text
    keys = json.loads(run_outbox(env, "keys", "list", "--json").stdout)
    assert [(k["name"], k["role"]) for k in keys if k["name"] == "admin"] == [("admin", "admin")]
    assert key not in json.dumps(keys)


def producer_key(env: dict[str, str], name: str) -> dict[str, str]:
    created = run_outbox(env, "keys", "create", "--role", "producer", "--name", name, "--json")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}


def wait_for_status(api: httpx.Client, auth: dict[str, str], url: str, wanted: str) -> None:
    deadline = time.monotonic() + 30
    while (current := api.get(url, headers=auth).json())["status"] != wanted:
        assert time.monotonic() < deadline, current
        time.sleep(0.2)


def test_post_an_email_over_http_and_the_worker_sends_it(
    env: dict[str, str], peer: SmtpPeer, api: httpx.Client
) -> None:
    configure(env, peer, PASSWORD)
    auth = producer_key(env, "scheduler")
    before = len(peer.messages)
    answer = api.post(
        "/api/emails",
        headers=auth,
        json={"to": ["erin@example.com"], "subject": "Over HTTP", "text": "All green."},
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "queued"
    wait_for_status(api, auth, accepted["status_url"], "sent")
    [received] = peer.wait_for_messages(before + 1)[before:]
    assert received.rcpt_tos == ("erin@example.com",)
    assert b"Subject: Over HTTP" in received.data


def test_the_same_idempotency_key_over_http_sends_once(
    env: dict[str, str], peer: SmtpPeer, api: httpx.Client
) -> None:
    configure(env, peer, PASSWORD)
    auth = {**producer_key(env, "flows"), "Idempotency-Key": "flow-12-step-3"}
    message = {"to": ["fay@example.com"], "subject": "Exactly once", "text": "x"}
    before = len(peer.messages)
    first = api.post("/api/emails", headers=auth, json=message).json()
    wait_for_status(api, auth, first["status_url"], "sent")
    second = api.post("/api/emails", headers=auth, json=message).json()
    assert (second["id"], second["created"], second["status"]) == (first["id"], False, "sent")
    time.sleep(1)
    assert len(peer.messages) == before + 1


def test_readyz_sees_the_worker(api: httpx.Client) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] >= 1
