"""The staging delivery modes end to end: a real ``outbox worker`` process, real Redis, the
real SMTP peer, the settings saved with the CLI and over HTTP, and the API served for real.
In capture mode nothing reaches the peer and the API gives the captured message back; in
redirect mode the peer gets the message for the redirect addresses only; the sending limits
still hold; ``/readyz`` and ``/metrics`` say the mode."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import trustme

from api.message_routes import HTML_POLICY
from config.api_keys import ApiKeyStore, Role
from peers.processes import Service, run_outbox
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tests.support.environment import fresh_environment
from tests.support.served_api import served_api
from tests.support.smtp_delivery import parse

FROM = "robot@example.com"
REDIRECT_TO = "qa@example.com"
TEXT = "41 passed, 1 failed: Checkout"
HTML = "<h1>Nightly run</h1><p>41 passed, <b>1 failed</b></p><script>alert(1)</script>"


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    # Database 3: no other module's worker takes these deliveries.
    return fresh_environment(
        redis_server.url.removesuffix("/0") + "/3",
        tmp_path_factory.mktemp("modes"),
        certificate_authority,
    )


@pytest.fixture(scope="module")
def context(env: dict[str, str]) -> Iterator[OutboxContext]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield OutboxContext.from_environment()


@pytest.fixture(scope="module")
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[Service]:
    service = Service(["outbox", "worker", "--loglevel", "INFO"], env)
    try:
        service.wait_for_output(" ready.")
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def keys(context: OutboxContext) -> dict[str, str]:
    store = ApiKeyStore(context.redis)
    return {
        "admin": store.create("admin", Role.ADMIN),
        "producer": store.create("nightly", Role.PRODUCER),
        "other": store.create("other-producer", Role.PRODUCER),
    }


@pytest.fixture
def site(context: OutboxContext) -> Iterator[str]:
    """A fresh API per test: /readyz answers from a check of its own, not a cached one."""
    with served_api(context) as (host, port):
        yield f"http://{host}:{port}"


def client(site: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=site, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def set_smtp(env: dict[str, str], peer: SmtpPeer, *options: str) -> str:
    """``outbox settings set smtp`` for the plain peer; its standard error."""
    saved = run_outbox(
        env, "settings", "set", "smtp", "--server", peer.host, "--port", str(peer.port),
        "--from-mailbox", FROM, "--tls", "none", *options,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    return saved.stderr


def send(api: httpx.Client, **fields: Any) -> str:
    body = {"to": ["alice@example.com"], "subject": "Nightly run", "text": TEXT, **fields}
    answer = api.post("/api/emails", json=body)
    assert answer.status_code == 202, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def wait_for_status(api: httpx.Client, delivery_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        record: dict[str, Any] = api.get(f"/api/emails/{delivery_id}").json()
        if record["status"] == status:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


def mode_gauge(site: str) -> dict[str, float]:
    text = httpx.get(f"{site}/metrics").text
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("outbox_delivery_mode{")
    }


def test_capture_sends_nothing_and_keeps_the_message(
    env: dict[str, str], peer: SmtpPeer, worker: Service, keys: dict[str, str], site: str
) -> None:
    warned = set_smtp(env, peer, "--delivery-mode", "capture")
    assert "warning: delivery mode capture: nothing is sent" in warned
    shown = run_outbox(env, "settings", "show")
    assert "delivery_mode            capture" in shown.stdout
    assert "warning: delivery mode capture" in shown.stderr
    assert json.loads(run_outbox(env, "settings", "show", "--json").stdout)["delivery_mode"] == (
        "capture"
    )
    # The checks: the connection still reaches the real server; the test e-mail is captured.
    assert run_outbox(env, "settings", "test-connection").returncode == 0
    tested = run_outbox(env, "settings", "send-test")
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.startswith("test e-mail captured, not sent")

    with client(site, keys["producer"]) as api, client(site, keys["admin"]) as admin:
        delivery_id = send(api, cc=["bob@example.com"], bcc=["secret@example.com"], html=HTML)
        record = wait_for_status(api, delivery_id, "captured")
        assert [r["status"] for r in record["recipients"]] == ["captured"] * 3
        assert record["attempts"][0]["outcome"] == "captured"
        assert record["redirected_to"] == []

        raw = api.get(f"/api/emails/{delivery_id}/message")
        assert raw.status_code == 200, raw.text
        assert raw.headers["content-type"] == "message/rfc822"
        assert raw.headers["content-disposition"] == f'attachment; filename="{delivery_id}.eml"'
        message = parse(raw.content)
        assert message["Subject"] == "Nightly run"
        assert message["Cc"] == "bob@example.com"
        assert message["Bcc"] is None
        assert b"secret@example.com" not in raw.content
        text = message.get_body(("plain",))
        assert isinstance(text, EmailMessage)
        assert text.get_content().strip() == TEXT

        parts = admin.get(f"/api/emails/{delivery_id}/message/parts").json()
        assert (parts["subject"], parts["text"].strip(), parts["html"].strip()) == (
            "Nightly run",
            TEXT,
            HTML,
        )
        assert ["Subject", "Nightly run"] in parts["headers"]

        html = api.get(f"/api/emails/{delivery_id}/message/html")
        assert html.status_code == 200
        assert html.headers["content-type"] == "text/html; charset=utf-8"
        assert html.headers["content-security-policy"] == HTML_POLICY
        assert "script-src" not in HTML_POLICY  # default-src 'none' covers scripts
        assert html.headers["x-content-type-options"] == "nosniff"
        assert html.text.strip() == HTML

        # Another producer's delivery is as unknown as a missing one.
        with client(site, keys["other"]) as other:
            refused = other.get(f"/api/emails/{delivery_id}/message")
        assert refused.status_code == 404

        ready = httpx.get(f"{site}/readyz").json()
        assert (ready["ready"], ready["delivery_mode"]) == (True, "capture")
        assert mode_gauge(site) == {"deliver": 0, "capture": 1, "redirect": 0}
        assert peer.messages == []  # nothing left outbox

        # Back to deliver: the next e-mail is sent, and has no captured message.
        set_smtp(env, peer)
        sent_id = send(api)
        wait_for_status(api, sent_id, "sent")
        missing = api.get(f"/api/emails/{sent_id}/message")
        assert missing.status_code == 404
        assert missing.json()["detail"].startswith(
            f"delivery {sent_id} has no captured message: it is sent"
        )
        assert api.get(f"/api/emails/{sent_id}/message/html").status_code == 404
    assert len(peer.messages) == 1


def test_redirect_sends_only_to_the_redirect_addresses(
    env: dict[str, str], peer: SmtpPeer, worker: Service, keys: dict[str, str], site: str
) -> None:
    before = len(peer.messages)
    misplaced = run_outbox(
        env, "settings", "set", "smtp", "--from-mailbox", FROM, "--redirect-to", REDIRECT_TO
    )
    assert (misplaced.returncode, misplaced.stderr.strip()) == (
        2,
        "error: --redirect-to is for --delivery-mode redirect",
    )
    settings = {
        "protocol": "smtp",
        "server": peer.host,
        "port": peer.port,
        "from_mailbox": FROM,
        "tls": "none",
        "delivery_mode": "redirect",
    }
    with client(site, keys["admin"]) as admin:
        refused = admin.put("/api/settings/mail", json=settings)
        assert refused.status_code == 422
        assert refused.json()["field"] == "redirect_to"
        saved = admin.put("/api/settings/mail", json={**settings, "redirect_to": [REDIRECT_TO]})
        assert saved.status_code == 200, saved.text
        view = admin.get("/api/settings/mail").json()
        assert (view["delivery_mode"], view["redirect_to"]) == ("redirect", [REDIRECT_TO])
        assert "redirect_to" in admin.get("/api/settings/mail/history").json()[0]["changed"]

        delivery_id = send(admin, cc=["bob@example.com"], bcc=["secret@example.com"])
        record = wait_for_status(admin, delivery_id, "sent")
    [received] = peer.wait_for_messages(before + 1)[before:]
    assert received.rcpt_tos == (REDIRECT_TO,)
    message = parse(received.data)
    assert message["To"] == REDIRECT_TO
    assert message["Cc"] is None
    assert message["X-Outbox-Original-To"] == (
        "alice@example.com, bob@example.com, secret@example.com"
    )
    assert [(r["address"], r["status"]) for r in record["recipients"]] == [
        ("alice@example.com", "sent"),
        ("bob@example.com", "sent"),
        ("secret@example.com", "sent"),
    ]
    status = json.loads(run_outbox(env, "status", delivery_id, "--json").stdout)
    assert status["redirected_to"] == [REDIRECT_TO]
    shown = run_outbox(env, "settings", "show")
    assert f"warning: delivery mode redirect: every e-mail goes only to {REDIRECT_TO}" in (
        shown.stderr
    )
    ready = httpx.get(f"{site}/readyz").json()
    assert ready["delivery_mode"] == "redirect"
    assert mode_gauge(site) == {"deliver": 0, "capture": 0, "redirect": 1}
    time.sleep(0.5)
    assert len(peer.messages) == before + 1  # one message, to the redirect address only


def test_readyz_names_no_mode_while_delivering(
    env: dict[str, str], peer: SmtpPeer, worker: Service, site: str
) -> None:
    set_smtp(env, peer)
    assert httpx.get(f"{site}/readyz").json() == {"ready": True, "redis": True, "workers": 1}
    assert mode_gauge(site) == {"deliver": 1, "capture": 0, "redirect": 0}
    assert "warning" not in run_outbox(env, "settings", "show").stderr


def test_the_sending_limits_hold_in_capture_mode(
    env: dict[str, str], peer: SmtpPeer, worker: Service, keys: dict[str, str], site: str
) -> None:
    before = len(peer.messages)
    set_smtp(env, peer, "--delivery-mode", "capture", "--max-messages-per-minute", "1")
    with client(site, keys["producer"]) as api:
        first = send(api, subject="first")
        wait_for_status(api, first, "captured")
        second = send(api, subject="second")
        waiting = wait_for_status(api, second, "waiting")
    assert waiting["waiting_for"] == "the sending limit, 1 per minute"
    assert waiting["next_attempt_at"] > time.time() + 30  # after the minute, not now
    assert len(peer.messages) == before
