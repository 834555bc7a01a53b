"""A worker process killed mid-send: its job is redelivered and the e-mail still goes out; a
message that kills its process every time fails alone, costing the others at most one try."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import SenderKiller, Service, child_pids, run_outbox
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.message_input import MessageInput
from tests.support.environment import context_of
from worker.records import AttemptOutcome, DeliveryStatus


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
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


def test_killed_worker_process_job_is_redelivered_and_sent(
    env: dict[str, str], peer: SmtpPeer
) -> None:
    configured = run_outbox(
        env,
        "settings",
        "set",
        "smtp",
        "--server",
        peer.host,
        "--port",
        str(peer.port),
        "--from-mailbox",
        "robot@example.com",
        "--tls",
        "none",
    )
    assert configured.returncode == 0, configured.stderr
    # The pool process is killed while the server holds its message (at the end of DATA),
    # once: the second attempt is accepted.
    killer = SenderKiller("a@example.com", server_port=peer.port, times=1)
    peer.on_data = killer
    worker = Service(["outbox", "worker", "--concurrency", "1"], env)
    try:
        worker.wait_for_output(" ready.")
        pool_processes = child_pids(worker.pid)
        sent = run_outbox(env, "send", "--to", "a@example.com", "--subject", "s", "--text", "x")
        delivery_id = sent.stdout.strip()

        deadline = time.monotonic() + 60  # generous: a loaded machine starts workers slowly
        while not killer.kills:
            assert time.monotonic() < deadline, worker.output
            time.sleep(0.1)
        assert killer.kills == pool_processes

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
    received = peer.wait_for_messages(1)
    message_ids = {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in received}
    assert len(message_ids) == 1  # any duplicate carries the same Message-ID


POISON = "poison@example.com"
INNOCENTS = 7  # with the poison, as many as one process has in flight
MAX_ATTEMPTS = 3


def test_a_message_that_kills_its_process_every_time_fails_alone(env: dict[str, str]) -> None:
    env = {
        **env,
        "OUTBOX_CLAIM_LEASE_SECONDS": "3",
        "OUTBOX_SWEEP_INTERVAL_SECONDS": "0.5",
        "OUTBOX_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        # Every delivery of the chunk on its own connection: all of them transfer together.
        "OUTBOX_SMTP_MAX_CONNECTIONS": str(INNOCENTS + 1),
    }
    context = context_of(env)
    with smtp_peer() as peer:
        kill_the_sender = SenderKiller(POISON, server_port=peer.port)
        peer.data_delay_seconds = 0.5  # the whole chunk is in flight when the poison's ends
        peer.on_data = kill_the_sender
        context.settings_store.save(
            SmtpSettings(
                server=peer.host,
                port=peer.port,
                from_mailbox="robot@example.com",
                tls=TlsMode.NONE,
            )
        )
        worker = Service(["outbox", "worker", "--concurrency", "1"], env)
        try:
            worker.wait_for_output(" ready.")
            from tasks.celery_app import producer_for

            messages = [
                MessageInput(to=[POISON], subject="poison", text="x"),
                *(
                    MessageInput(to=[f"reader{n}@example.com"], subject=f"innocent {n}", text="x")
                    for n in range(INNOCENTS)
                ),
            ]
            # One chunk, one task: the innocents share the poison's process.
            poison, *innocents = [c.id for c in producer_for(context).enqueue_many(messages)]
            started = time.monotonic()
            deadline = started + 60
            while not set(statuses := context.deliveries.statuses([poison, *innocents])) <= {
                DeliveryStatus.SENT,
                DeliveryStatus.FAILED,
            }:
                assert time.monotonic() < deadline, (statuses, worker.output[-3000:])
                time.sleep(0.3)
            seconds = time.monotonic() - started
        finally:
            worker.stop()
    assert statuses == [DeliveryStatus.FAILED] + [DeliveryStatus.SENT] * INNOCENTS
    assert len(kill_the_sender.kills) == MAX_ATTEMPTS
    failed = context.deliveries.get(poison)
    assert [a.outcome for a in failed.attempts] == [AttemptOutcome.LOST] * MAX_ATTEMPTS
    outcomes = [[a.outcome.value for a in context.deliveries.get(i).attempts] for i in innocents]
    print(f"poison failed, {INNOCENTS} sent in {seconds:.1f} s; innocents' attempts: {outcomes}")
    # Lost once at most: beside the poison's first attempt, before anyone could know.
    for attempts in outcomes:
        assert attempts in ([AttemptOutcome.SENT], [AttemptOutcome.LOST, AttemptOutcome.SENT])
