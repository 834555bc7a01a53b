"""The fault suite: real processes on loopback under load, a fault, then the count.

`make faults` runs every scenario with outbox's default timings (``OUTBOX_FAULTS=full``) and
writes each report row to ``OUTBOX_FAULTS_REPORT``; `make test` leaves out the long ones
(marked ``full_faults``) and runs the others with a short lease and sweep interval.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr

from config.mail_settings import OAuthSettings
from peers.graph_standin import GraphStandIn
from peers.processes import ROOT, SenderKiller, run_outbox
from tasks.message_input import MessageInput
from tasks.producer import CHUNK_SIZE
from tests.faults.harness import FaultRun, Report
from worker.records import AttemptOutcome, DeliveryStatus, status_index_key
from worker.records.codec import as_text

FULL = os.environ.get("OUTBOX_FAULTS") == "full"
LOAD = 1000
POISON = "poison@example.com"


@dataclass(frozen=True)
class Timing:
    lease: float
    sweep: float
    stranded_after: float

    @property
    def env(self) -> dict[str, str]:
        return {
            "OUTBOX_CLAIM_LEASE_SECONDS": str(self.lease),
            "OUTBOX_SWEEP_INTERVAL_SECONDS": str(self.sweep),
            "OUTBOX_STRANDED_AFTER_SECONDS": str(self.stranded_after),
        }


# The defaults of outbox itself (make faults), or shorter ones for make test.
TIMING = Timing(lease=30, sweep=5, stranded_after=30) if FULL else Timing(6, 1, 6)
# Too long for make test (a 30 s outage, 10,000 retrying deliveries): `make faults` runs them.
full_only = pytest.mark.full_faults


@pytest.fixture
def fault_run(
    tmp_path: Path,
    certificate_authority: trustme.CA,
    server_certificate: trustme.LeafCert,
    request: pytest.FixtureRequest,
) -> Iterator[FaultRun]:
    overrides = {**TIMING.env, **getattr(request, "param", {})}
    run = FaultRun(tmp_path, certificate_authority, server_certificate, **overrides)
    try:
        yield run
    finally:
        run.close()


def record(report: Report) -> None:
    print(report.row())
    target = os.environ.get("OUTBOX_FAULTS_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(report.row() + "\n")


def in_flight_per_process(run: FaultRun) -> int:
    settings = run.context.settings
    return 2 * max(settings.smtp_max_connections, settings.graph_max_concurrency)


def test_1_sigkill_of_one_pool_process(fault_run: FaultRun) -> None:
    run = fault_run
    run.peer.data_delay_seconds = 0.02  # about 300 messages a second over 8 connections
    worker = run.start_worker()
    ids = run.enqueue(LOAD)
    run.wait_until_sent(ids, at_least=100)
    os.kill(run.pool_pids(worker)[0], signal.SIGKILL)
    report = run.report("SIGKILL of one pool process", ids, run.wait_until_final(ids, 120))
    record(report)
    assert report.lost == 0
    assert report.duplicates <= in_flight_per_process(run)
    assert report.seconds_to_final <= 60


def test_2_sigterm_of_the_whole_worker_then_a_new_worker(fault_run: FaultRun) -> None:
    run = fault_run
    run.peer.data_delay_seconds = 0.02
    worker = run.start_worker()
    ids = run.enqueue(LOAD)
    run.wait_until_sent(ids, at_least=100)
    os.killpg(worker.pid, signal.SIGTERM)  # what systemd's default stop does
    run.wait_until(lambda: worker.exited, 60, "stopped after SIGTERM")
    run.start_worker()
    report = run.report(
        "SIGTERM of the worker's process group, new worker", ids, run.wait_until_final(ids, 120)
    )
    record(report)
    assert report.lost == 0
    assert report.duplicates == 0
    assert report.seconds_to_final <= 60


def test_3_sigkill_of_every_worker_process_then_a_new_worker(fault_run: FaultRun) -> None:
    run = fault_run
    run.peer.data_delay_seconds = 0.02
    worker = run.start_worker()
    ids = run.enqueue(LOAD)
    run.wait_until_sent(ids, at_least=100)
    os.killpg(worker.pid, signal.SIGKILL)  # a host crash, an OOM kill of the container
    run.wait_until(lambda: worker.exited, 30, "gone after SIGKILL")
    run.start_worker()
    report = run.report(
        "SIGKILL of every worker process, new worker", ids, run.wait_until_final(ids, 180)
    )
    record(report)
    assert report.lost == 0
    assert report.duplicates <= 2 * in_flight_per_process(run)
    assert report.seconds_to_final <= 90


@full_only
def test_4_smtp_server_down_for_30_seconds(fault_run: FaultRun) -> None:
    run = fault_run
    run.peer.data_delay_seconds = 0.02
    run.start_worker()
    ids = run.enqueue(LOAD)
    run.wait_until_sent(ids, at_least=100)
    run.peer.stop()
    time.sleep(30)
    run.peer.start()
    report = run.report("SMTP server down for 30 s", ids, run.wait_until_final(ids, 180))
    record(report)
    assert report.lost == 0
    assert report.sent == LOAD
    retried = [run.context.deliveries.get(i) for i in ids]
    interrupted = [r for r in retried if len(r.attempts) > 1]
    assert interrupted, "the outage interrupted no delivery: it came too late"
    for record_ in interrupted:
        assert record_.attempts[-1].outcome is AttemptOutcome.SENT
        assert all(a.outcome is not AttemptOutcome.SENT for a in record_.attempts[:-1])


def test_5_redis_restarted_mid_load(fault_run: FaultRun) -> None:
    run = fault_run
    run.peer.data_delay_seconds = 0.02
    run.start_worker()
    ids = run.enqueue(LOAD)
    run.wait_until_sent(ids, at_least=100)
    run.redis.stop()  # SIGTERM; the append-only file is synced on every write
    started = time.monotonic()
    refused = run_outbox(run.env, "send", "--to", "late@example.com", "--subject", "s")
    assert time.monotonic() - started < 6  # a clear error, not a hang
    assert refused.returncode == 1
    assert f"Redis at 127.0.0.1:{run.redis.port} is unreachable" in refused.stderr
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))
    run.redis.start()
    report = run.report(
        "Redis restarted mid-load (append-only file)", ids, run.wait_until_final(ids, 180)
    )
    record(report)
    assert report.lost == 0


def test_6_producer_killed_between_storing_and_publishing(fault_run: FaultRun) -> None:
    run = fault_run
    stored = subprocess.run(
        [sys.executable, "-c", _DYING_PRODUCER, str(LOAD)],
        env={**os.environ, **run.env},
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert stored.returncode == -signal.SIGKILL, stored.stderr
    index = run.context.redis.zrange(status_index_key(DeliveryStatus.QUEUED), 0, -1)
    ids = [as_text(raw) for raw in index]
    assert len(ids) == CHUNK_SIZE  # stored, and none published: the producer died first
    run.start_worker()
    report = run.report(
        "producer killed between storing and publishing", ids, run.wait_until_final(ids, 180)
    )
    record(report)
    assert report.lost == 0
    assert report.sent == CHUNK_SIZE
    assert report.seconds_to_final <= 120


# Stores its first chunk of records, then dies as it would publish them (SIGKILL: no cleanup
# at all); the producer queues each chunk as soon as it is stored, so it stores no more.
_DYING_PRODUCER = """
import os, signal, sys
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import CHUNK_SIZE
from tasks.producer import Producer
context = OutboxContext.from_environment()
producer = Producer(context.deliveries,
                    lambda chunks, priority: os.kill(os.getpid(), signal.SIGKILL),
                    message_id_domain="faults.test", max_message_bytes=10**6)
producer.enqueue_many([MessageInput(to=["reader@example.com"], subject=f"stored {i}", text="x")
                       for i in range(int(sys.argv[1]))])
"""


@pytest.mark.parametrize("fault_run", [{"OUTBOX_MAX_ATTEMPTS": "3"}], indirect=True)
def test_7_a_poison_message_that_kills_its_worker_every_time(fault_run: FaultRun) -> None:
    run = fault_run
    kill_the_sender = SenderKiller(POISON, server_port=run.peer.port)

    run.peer.on_data = kill_the_sender
    run.start_worker()
    ids = run.enqueue(LOAD - 1)
    [poison] = run.enqueue(1, to=POISON)
    ids.append(poison)
    report = run.report(
        "a message that kills its worker at every attempt", ids, run.wait_until_final(ids, 240)
    )
    record(report)
    assert report.lost == 0
    assert report.sent == LOAD - 1
    failed = run.context.deliveries.get(poison)
    assert failed.status is DeliveryStatus.FAILED
    assert "worker was lost" in (failed.last_error or "")
    assert [a.outcome for a in failed.attempts] == [AttemptOutcome.LOST] * 3
    assert len(kill_the_sender.kills) == 3


@pytest.mark.parametrize("fault_run", [{"OUTBOX_CLAIM_LEASE_SECONDS": "3"}], indirect=True)
def test_8_a_graph_upload_longer_than_three_leases_is_never_taken_over(
    fault_run: FaultRun, server_certificate: trustme.LeafCert
) -> None:
    run = fault_run
    with GraphStandIn(server_certificate) as graph:
        graph.upload_delay_seconds = 6.0  # 2 chunks: 12 s, four leases of 3 s
        run.context.settings_store.save(
            OAuthSettings(
                from_mailbox="robot@contoso.com",
                tenant=graph.tenant,
                client_id=graph.client_id,
                client_secret=SecretStr("app-secret-value"),
                instance=graph.base_url,
                api_url=graph.base_url,
            )
        )
        run.start_worker()
        from tasks.celery_app import producer_for

        large = MessageInput.model_validate(
            {
                "to": ["reader@example.com"],
                "subject": "large report",
                "text": "attached",
                "attachments": [{"name": "r.bin", "content": os.urandom(5 * 1024 * 1024)}],
            }
        )
        [big] = [c.id for c in producer_for(run.context).enqueue_many([large])]
        ids = [big, *run.enqueue(LOAD - 1)]
        report = run.report(
            "Graph attempt longer than three leases", ids, run.wait_until_final(ids, 180)
        )
        record(report)
        sent_large = [m for m in graph.sent_messages() if m["subject"] == "large report"]
    assert report.lost == 0
    assert len(sent_large) == 1
    attempts = run.context.deliveries.get(big).attempts
    assert [a.outcome for a in attempts] == [AttemptOutcome.SENT]


@full_only
@pytest.mark.parametrize(
    "fault_run",
    [{"OUTBOX_RETRY_BASE_SECONDS": "1", "OUTBOX_RETRY_MAX_SECONDS": "8"}],
    indirect=True,
)
def test_9_a_long_outage_with_ten_thousand_retrying(fault_run: FaultRun) -> None:
    """With the backoff shortened about 75 times (1 s to 8 s instead of 10 s to 600 s), a
    25-second outage stands for a 20-minute one: every delivery retries several times."""
    run = fault_run
    run.start_worker()
    run.peer.stop()
    ids = run.enqueue(10 * LOAD)
    time.sleep(25)
    during = run.statuses(ids)
    run.peer.start()
    report = run.report("SMTP outage with 10,000 retrying", ids, run.wait_until_final(ids, 600))
    record(report)
    assert during[DeliveryStatus.SENT] == 0
    assert report.lost == 0
    assert report.sent == 10 * LOAD
    retried = sum(len(run.context.deliveries.get(i).attempts) > 2 for i in ids)
    assert retried > 9 * LOAD  # the outage really held them back, through several retries
    assert report.worker_rss_mb < 150
