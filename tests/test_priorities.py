"""Priorities through a real worker: a run's report (high priority) overtakes a backlog of
normal e-mails."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import Service
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.celery_app import producer_for
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.reports.model import RunReport, RunStatus
from tasks.reports.render import ReportRenderer
from tasks.reports.rules import Notification, RecipientList, Rule
from tasks.reports.service import ReportService
from tests.support.environment import fresh_environment
from tests.support.smtp_delivery import parse

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
    return [str(parse(m.data)["Subject"]) for m in peer.messages]


def test_a_report_overtakes_a_backlog_of_normal_emails(
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
    context.schedules.save(
        "nightly",
        Notification(
            name="Nightly", lists=[RecipientList(rule=Rule.ALWAYS, to=["qa@example.com"])]
        ),
    )
    reports = ReportService(context.schedules, producer, ReportRenderer())
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
        reports.post(
            RunReport(
                schedule_id="nightly",
                schedule_name="Nightly",
                run_id="r-1",
                started_at=datetime(2026, 11, 24, 1, tzinfo=UTC),
                finished_at=datetime(2026, 11, 24, 2, tzinfo=UTC),
                status=RunStatus.FAILED,
            )
        )
        peer.wait_for_messages(BACKLOG + 1, timeout=60)
    finally:
        worker.stop()
    order = subjects(peer)
    still_queued = BACKLOG - arrived_before_it_was_queued
    [report] = [n for n, subject in enumerate(order) if subject == "[FAILED] Nightly — no flows"]
    overtaken = report - arrived_before_it_was_queued
    print(f"the report arrived after {overtaken} of the {still_queued} e-mails still queued")
    assert overtaken <= still_queued * 0.1
