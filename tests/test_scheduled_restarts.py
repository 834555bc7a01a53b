"""A scheduled e-mail survives a worker restart and a Redis restart in between: the real worker
process and a durable redis-server send it within seconds after its time, never before; the
one cancelled meanwhile is never sent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from peers.processes import Service, run_outbox
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer

AHEAD_SECONDS = 12  # time enough to restart both before it is due


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", durable=True)
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(durable_redis: RedisServer, tmp_path: Path) -> dict[str, str]:
    return {
        "OUTBOX_REDIS_URL": durable_redis.url,
        "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
        "OUTBOX_DATA_DIR": str(tmp_path / "data"),
        "OUTBOX_SMTP_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


def worker(env: dict[str, str]) -> Service:
    started = Service(["outbox", "worker", "--concurrency", "1"], env)
    started.wait_for_output(" ready.")
    return started


def test_a_scheduled_email_goes_out_on_time_across_restarts(
    env: dict[str, str], durable_redis: RedisServer, peer: SmtpPeer
) -> None:
    configured = run_outbox(
        env, "settings", "set", "smtp", "--server", peer.host, "--port", str(peer.port),
        "--from-mailbox", "robot@example.com", "--tls", "none",
    )  # fmt: skip
    assert configured.returncode == 0, configured.stderr
    first = worker(env)
    send_at = time.time() + AHEAD_SECONDS
    when = datetime.fromtimestamp(send_at, UTC).isoformat()
    sent = run_outbox(
        env, "send", "--to", "a@example.com", "--subject", "Later", "--text", "x",
        "--send-at", when, "--priority", "high",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    delivery_id = sent.stdout.strip()
    shown = run_outbox(env, "status", delivery_id)
    assert "scheduled for" in shown.stdout
    withdrawn = run_outbox(
        env, "send", "--to", "b@example.com", "--subject", "Withdrawn", "--text", "x",
        "--send-at", when,
    ).stdout.strip()  # fmt: skip
    cancelled = run_outbox(env, "cancel", withdrawn)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled {withdrawn}\n")

    first.stop()
    durable_redis.stop()
    durable_redis.start()
    second = worker(env)
    try:
        assert time.time() < send_at, "the restarts took longer than the schedule allowed"
        assert peer.messages == []
        [received] = peer.wait_for_messages(1, timeout=AHEAD_SECONDS + 15)
        arrived = time.time()
        summary = json.loads(run_outbox(env, "status", delivery_id, "--json").stdout)
        time.sleep(2)  # time enough for the cancelled one to go out, were it going to
        assert len(peer.messages) == 1
        assert json.loads(run_outbox(env, "status", withdrawn, "--json").stdout)["status"] == (
            "cancelled"
        )
    finally:
        second.stop()
    assert send_at <= arrived < send_at + 5
    assert (summary["status"], summary["priority"]) == ("sent", "high")
    assert summary["attempts"][0]["started_at"] >= send_at
    assert received.rcpt_tos == ("a@example.com",)
