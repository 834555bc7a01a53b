"""A full cycle with known secrets, then a search of everything outbox wrote or said for them:
every log line, every CLI output, every API and Flower answer, every command Redis received
(broker messages included) and a dump of every Redis key. A webhook endpoint's signing
secret is searched for too, everywhere but the one answer that shows it."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis
import trustme
from cryptography.fernet import Fernet

from peers.graph_standin import GraphStandIn
from peers.processes import ROOT, Service, run_outbox
from peers.redis_server import RedisServer, free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.support.environment import fresh_environment
from tests.support.webhook_receiver import webhook_receiver

PASSWORD = "scan-Pa55word-7f3a"
WRONG_PASSWORD = "scan-Wrong-Pa55-91c2"
CLIENT_SECRET = "scan-Client-Secret-5d2e"
WRONG_CLIENT_SECRET = "scan-Wrong-Client-8b1f"
SECRETS = (PASSWORD, WRONG_PASSWORD, CLIENT_SECRET, WRONG_CLIENT_SECRET)
USER = "robot"


def hidden_forms(secret: str) -> list[str]:
    """The secret as text and as it would show inside base64 (kombu encodes message bodies so)
    at each of the three alignments: the characters its bytes alone determine."""
    forms = [secret]
    raw = secret.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        forms.append(encoded[(offset + 2) // 3 * 4 : (offset + len(raw)) // 3 * 4])
    return forms


class Transcript:
    """Everything said during the cycle, to be searched at the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> str:
        self.parts.append(text)
        return text

    def cli(self, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
        result = run_outbox(env, *args, stdin=stdin)
        self.add(result.stdout + result.stderr)
        return result.stdout


class RedisMonitor:
    """Every command the Redis server receives, as MONITOR reports it."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self.error: Exception | None = None
        self._closing = False
        # No read timeout: a quiet moment must not end the recording.
        self._client = redis.Redis.from_url(url, socket_timeout=None)
        # Entered here, before anything else talks to Redis; left in close(). (redis-py leaves
        # Redis.monitor() and its Monitor unannotated.)
        self._monitor = self._client.monitor().__enter__()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for command in self._monitor.listen():
                self.lines.append(str(command["command"]))
        except Exception as exc:
            if not self._closing:
                self.error = exc

    def close(self) -> None:
        self._closing = True
        self._monitor.__exit__(None, None, None)
        self._thread.join(timeout=5)
        self._client.close()
        # A recording that stopped early would make the scan pass without looking.
        assert self.error is None, f"MONITOR stopped early: {self.error!r}"


def every_key(client: redis.Redis) -> str:
    """A dump of every key, whatever its type."""
    readers: dict[bytes | str, Callable[[bytes], object]] = {
        b"string": lambda key: [client.get(key)],
        b"hash": lambda key: list(client.hgetall(key).items()),
        b"list": lambda key: client.lrange(key, 0, -1),
        b"set": lambda key: list(client.smembers(key)),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"stream": lambda key: client.xrange(key),
    }
    dump = []
    for key in client.scan_iter(count=1000):
        dump.append(f"{key!r}: {readers[client.type(key)](key)!r}")
    return "\n".join(dump)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server.url
    server.stop()


def wait_until(env: dict[str, str], transcript: Transcript, delivery_id: str, *wanted: str) -> str:
    """The delivery's status once it is one of ``wanted`` (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        status = str(json.loads(transcript.cli(env, "status", delivery_id, "--json"))["status"])
        if status in wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def wait_until_final(env: dict[str, str], transcript: Transcript, delivery_id: str) -> str:
    return wait_until(env, transcript, delivery_id, "sent", "failed", "partially_sent")


def test_no_secret_is_ever_written_or_said(
    redis_url: str,
    tmp_path: Path,
    certificate_authority: trustme.CA,
    server_certificate: trustme.LeafCert,
) -> None:
    env = fresh_environment(
        redis_url,
        tmp_path,
        certificate_authority,
        OUTBOX_RETRY_BASE_SECONDS="2",
        OUTBOX_RETRY_MAX_SECONDS="4",
        OUTBOX_MAX_ATTEMPTS="6",  # the deferred recipient is freed while it waits
        OUTBOX_FLOWER_PORT=str(free_port()),
        OUTBOX_API_PORT=str(free_port()),
        FLOWER_UNAUTHENTICATED_API="true",
    )
    transcript = Transcript()
    stack = ExitStack()
    monitor = RedisMonitor(redis_url)
    services = Service(["honcho", "start", "-f", str(ROOT / "Procfile")], env)
    peer: SmtpPeer = smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={USER: PASSWORD}
    )
    graph = GraphStandIn(server_certificate, client_secret=CLIENT_SECRET)
    try:
        peer.start()
        graph.start()
        services.wait_for_output(" ready.", "Visit me at", "Uvicorn running on")
        # A webhook endpoint: every delivery below is announced to it, signed. Its secret is
        # shown this once, so this answer alone stays out of the transcript.
        receiver = stack.enter_context(webhook_receiver())
        added = run_outbox(env, "webhooks", "add", receiver.url, "--json")
        assert added.returncode == 0, added.stderr
        webhook_secret = json.loads(added.stdout)["secret"]
        smtp = [
            *("settings", "set", "smtp", "--server", peer.host, "--port", str(peer.port)),
            *("--from-mailbox", "robot@example.com", "--username", USER, "--tls", "starttls"),
            "--password-stdin",
        ]
        send = ["send", "--to", "a@example.com", "--subject", "scan", "--text", "x"]

        # A wrong password: the check, a send and its retries fail with the server's reply.
        transcript.cli(env, *smtp, stdin=WRONG_PASSWORD + "\n")
        transcript.cli(env, "settings", "test-connection")
        failed_id = transcript.cli(env, *send).strip()
        assert wait_until_final(env, transcript, failed_id) == "failed"

        # The right one: check, test e-mail, a send, a refused and a deferred recipient.
        transcript.cli(env, *smtp, stdin=PASSWORD + "\n")
        assert "connection OK" in transcript.cli(env, "settings", "test-connection")
        transcript.cli(env, "settings", "send-test")
        transcript.cli(env, "retry", failed_id)
        assert wait_until_final(env, transcript, failed_id) == "sent"
        peer.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
        refused_id = transcript.cli(env, *send, "--to", "gone@example.com").strip()
        assert wait_until_final(env, transcript, refused_id) == "partially_sent"
        peer.rcpt_replies["busy@example.com"] = "451 4.2.0 try later"
        deferred_id = transcript.cli(env, *send[:2], "busy@example.com", *send[3:]).strip()
        assert wait_until(env, transcript, deferred_id, "retrying") == "retrying"
        del peer.rcpt_replies["busy@example.com"]
        assert wait_until_final(env, transcript, deferred_id) == "sent"

        # The same through the HTTP API, as an administrator.
        admin_key = json.loads(
            transcript.cli(env, "keys", "create", "--name", "ann", "--role", "admin", "--json")
        )["key"]
        auth = {"Authorization": f"Bearer {admin_key}"}
        form = {
            "protocol": "smtp",
            "server": peer.host,
            "port": peer.port,
            "from_mailbox": "robot@example.com",
            "username": USER,
            "password": PASSWORD,
            "tls": "starttls",
        }
        wrong_form = {**form, "password": WRONG_PASSWORD}
        api_url = f"http://127.0.0.1:{env['OUTBOX_API_PORT']}"
        with httpx.Client(base_url=api_url, headers=auth, timeout=30) as api:
            for method, path, body in [
                ("POST", "/api/settings/mail/test-connection", form),
                ("POST", "/api/settings/mail/test-connection", wrong_form),
                ("PUT", "/api/settings/mail", form),
                ("GET", "/api/settings/mail", None),
                ("GET", "/api/settings/mail/history", None),
                ("POST", "/api/emails", {"to": ["b@example.com"], "subject": "s", "text": "t"}),
                ("GET", "/api/emails", None),
                ("GET", "/metrics", None),
                ("GET", "/api/webhooks", None),
                ("GET", "/api/webhooks/deliveries", None),
            ]:
                transcript.add(api.request(method, path, json=body).text)

        # Microsoft Graph: a wrong client secret, then the right one and a send.
        oauth = [
            *("settings", "set", "oauth", "--from-mailbox", "robot@contoso.com"),
            *("--tenant", graph.tenant, "--client-id", graph.client_id),
            *("--instance", graph.base_url, "--api-url", graph.base_url),
            "--client-secret-stdin",
        ]
        transcript.cli(env, *oauth, stdin=WRONG_CLIENT_SECRET + "\n")
        transcript.cli(env, "settings", "test-connection")
        transcript.cli(env, *oauth, stdin=CLIENT_SECRET + "\n")
        assert "connection OK" in transcript.cli(env, "settings", "test-connection")
        graph_id = transcript.cli(env, *send).strip()
        assert wait_until_final(env, transcript, graph_id) == "sent"

        # Flower, as an operator looks at it.
        flower = f"http://127.0.0.1:{env['OUTBOX_FLOWER_PORT']}"
        for path in ("/api/tasks", "/api/workers", "/api/tasks?taskname=outbox.send"):
            transcript.add(httpx.get(flower + path, timeout=30).text)

        # What the receiver got, and what the operators see of it.
        assert receiver.wait_for(6)
        transcript.add("\n".join(str(r.headers) + r.body.decode() for r in receiver.requests))
        transcript.cli(env, "webhooks", "list")
        transcript.cli(env, "webhooks", "deliveries", "--json")

        # Keys rotated.
        new_key = Fernet.generate_key().decode()
        rotated = {**env, "OUTBOX_SECRET_KEY": f"{new_key},{env['OUTBOX_SECRET_KEY']}"}
        assert transcript.cli(rotated, "secrets", "rotate").startswith("re-encrypted 2")
        assert "connection OK" in transcript.cli(rotated, "settings", "test-connection")
    finally:
        services.stop()
        peer.stop()
        graph.stop()
        stack.close()
        client = redis.Redis.from_url(redis_url)
        transcript.add(every_key(client))
        client.close()
        monitor.close()
    transcript.add(services.output)
    transcript.add("\n".join(monitor.lines))

    everything = "\n".join(transcript.parts)
    # The haystack holds what a leak would sit beside: broker messages, stored ciphertexts,
    # the worker's log of the failed login.
    assert "outbox.send" in everything
    assert "password_encrypted" in everything
    assert "client_secret_encrypted" in everything
    assert "535" in everything
    assert "webhook-signature" in everything
    searched = (*SECRETS, webhook_secret, webhook_secret.removeprefix("whsec_"))
    leaks = [
        (secret, form) for secret in searched for form in hidden_forms(secret) if form in everything
    ]
    assert leaks == []
