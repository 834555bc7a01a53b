"""Priorities through a real worker: a high-priority e-mail overtakes a backlog of normal ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from config.mail_settings import SmtpSettings, TlsMode
from tasks.celery_app import producer_for
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tests.support.environment import fresh_environment
from worker.records import Priority
from worker.testing.processes import Service
from worker.testing.redis_server import RedisServer
from worker.testing.smtp_peer import SmtpPeer, smtp_peer

BACKLOG = 2_000


@pytest.fixture
def env(
    redis_server: RedisServer, tmp_path: Path, certificate_authority: trustme.CA
) -> dict[str, str]:
    # Database 2: no other test's worker consumes these queues.
    return fresh_environment(
        redis_server.url.removesuffix("/0") + "/2", tmp_path, certificate_authority
    )


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


def subjects(peer: SmtpPeer) -> list[str]:
    return [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in peer.messages]


def test_a_high_priority_email_overtakes_a_backlog_of_normal_ones(
    env: dict[str, str], peer: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    context = OutboxContext.from_environment()
    context.redis.flushdb()
    context.settings_store.save(
        SmtpSettings(
            server=peer.host, port=peer.port, from_mailbox="r@example.com", tls=TlsMode.NONE
        )
    )
    producer = producer_for(context)
    worker = Service(["outbox", "worker"], env)
    try:
        worker.wait_for_output(" ready.")
        producer.enqueue_many(
            [
                MessageInput(to=["a@example.com"], subject=f"normal {n}", text="x")
                for n in range(BACKLOG)
            ]
        )
        arrived_before_it_was_queued = len(peer.messages)
        producer.enqueue(
            MessageInput(to=["a@example.com"], subject="urgent", text="x", priority=Priority.HIGH)
        )
        peer.wait_for_messages(BACKLOG + 1, timeout=60)
    finally:
        worker.stop()
    order = subjects(peer)
    still_queued = BACKLOG - arrived_before_it_was_queued
    overtaken = order.index("urgent") - arrived_before_it_was_queued
    print(f"urgent arrived after {overtaken} of the {still_queued} normal e-mails still queued")
    assert overtaken <= still_queued * 0.1
