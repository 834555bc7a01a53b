"""A worker process killed mid-send: its job is redelivered and the e-mail still goes out."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from worker.testing.processes import Service, child_pids, run_outbox
from worker.testing.redis_server import RedisServer
from worker.testing.smtp_peer import SmtpPeer, smtp_peer


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    # Database 1: no other test's worker consumes this queue.
    return {
        "OUTBOX_REDIS_URL": redis_server.url.removesuffix("/0") + "/1",
        "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
        "OUTBOX_DATA_DIR": str(tmp_path / "data"),
        "OUTBOX_SMTP_TIMEOUT_SECONDS": "3",
        "OUTBOX_CLAIM_LEASE_SECONDS": "6",
        "OUTBOX_RETRY_BASE_SECONDS": "0.5",
        "OUTBOX_RETRY_MAX_SECONDS": "1",
    }


@pytest.fixture
def slow_peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as peer:
        peer.data_delay_seconds = 2.0
        yield peer


def test_killed_worker_process_job_is_redelivered_and_sent(
    env: dict[str, str], slow_peer: SmtpPeer
) -> None:
    configured = run_outbox(
        env,
        "settings",
        "set",
        "smtp",
        "--server",
        slow_peer.host,
        "--port",
        str(slow_peer.port),
        "--from-mailbox",
        "robot@example.com",
        "--tls",
        "none",
    )
    assert configured.returncode == 0, configured.stderr
    worker = Service(["outbox", "worker", "--concurrency", "1"], env)
    try:
        worker.wait_for_output(" ready.")
        sent = run_outbox(env, "send", "--to", "a@example.com", "--subject", "s", "--text", "x")
        delivery_id = sent.stdout.strip()

        deadline = time.monotonic() + 60  # generous: a loaded machine starts workers slowly
        while json.loads(run_outbox(env, "status", delivery_id, "--json").stdout)["status"] != (
            "sending"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        [pool_process] = child_pids(worker.pid)
        os.kill(pool_process, signal.SIGKILL)

        deadline = time.monotonic() + 40
        while True:
            summary = json.loads(run_outbox(env, "status", delivery_id, "--json").stdout)
            if summary["status"] == "sent":
                break
            assert time.monotonic() < deadline, (summary, worker.output)
            time.sleep(0.3)
    finally:
        worker.stop()
    assert [a["outcome"] for a in summary["attempts"]] == ["lost", "sent"]
    received = slow_peer.wait_for_messages(1)
    message_ids = {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in received}
    assert len(message_ids) == 1  # any duplicate carries the same Message-ID
