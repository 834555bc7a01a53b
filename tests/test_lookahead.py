"""No idle lanes between jobs: a real ``outbox worker`` process takes its next job off the queue
itself while a job's last e-mails are in flight, acknowledges each job only once its e-mails
are recorded, reports it to Flower as Celery does, and loses nothing when it is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import Service, child_pids
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.celery_app import create_celery_app, producer_for
from tasks.message_input import MessageInput
from tasks.queues import QUEUES
from tests.support.environment import context_of
from worker.records import DeliveryStatus

JOBS = 6  # each one e-mail: one Celery task each


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    # Database 2: no other test's worker consumes this queue.
    return {
        "OUTBOX_REDIS_URL": redis_server.url.removesuffix("/0") + "/2",
        "OUTBOX_SECRET_KEY": Fernet.generate_key().decode(),
        "OUTBOX_DATA_DIR": str(tmp_path / "data"),
        # One process with two connections: four deliveries in flight at most.
        "OUTBOX_SMTP_MAX_CONNECTIONS": "2",
        "OUTBOX_CLAIM_LEASE_SECONDS": "3",
        "OUTBOX_SWEEP_INTERVAL_SECONDS": "0.5",
        "OUTBOX_STRANDED_AFTER_SECONDS": "2",
        "OUTBOX_LOOKAHEAD": "true",
    }


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        # Each message held long enough that a job's e-mail is still in flight when the
        # next job could start beside it.
        running.data_delay_seconds = 0.5
        yield running


def configure(env: dict[str, str], peer: SmtpPeer) -> None:
    context_of(env).settings_store.save(
        SmtpSettings(
            server=peer.host, port=peer.port, from_mailbox="robot@example.com", tls=TlsMode.NONE
        )
    )


def enqueue_jobs(env: dict[str, str], count: int) -> list[str]:
    """``count`` e-mails, each enqueued alone: one job each."""
    producer = producer_for(context_of(env))
    return [
        producer.enqueue(MessageInput(to=[f"r{n}@example.com"], subject=f"job {n}", text="x")).id
        for n in range(count)
    ]


def wait_until_sent(env: dict[str, str], ids: list[str], worker: Service, timeout: float) -> None:
    deliveries = context_of(env).deliveries
    deadline = time.monotonic() + timeout
    while set(statuses := deliveries.statuses(ids)) != {DeliveryStatus.SENT}:
        assert time.monotonic() < deadline, (statuses, worker.output[-3000:])
        time.sleep(0.1)


class SucceededEvents:
    """Collects the ids of the ``task-succeeded`` events on the broker, as Flower would see
    them, until stopped."""

    def __init__(self, env: dict[str, str]) -> None:
        self._app = create_celery_app(context_of(env))
        self.task_ids: set[str] = set()
        self._listening = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> SucceededEvents:
        self._thread.start()
        assert self._listening.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _listen(self) -> None:
        with self._app.connection_for_read() as connection:
            receiver = self._app.events.Receiver(
                connection,
                handlers={"task-succeeded": lambda event: self.task_ids.add(event["uuid"])},
            )
            self._listening.set()
            while not self._stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)


def test_the_next_job_starts_while_the_last_e_mail_of_one_is_in_flight(
    env: dict[str, str], peer: SmtpPeer
) -> None:
    configure(env, peer)
    worker = Service(["outbox", "worker", "--concurrency", "1"], env)
    try:
        worker.wait_for_output(" ready.")
        with SucceededEvents(env) as events:
            ids = enqueue_jobs(env, JOBS)
            started = time.monotonic()
            wait_until_sent(env, ids, worker, timeout=30)
            seconds = time.monotonic() - started
            deadline = time.monotonic() + 10
            while len(events.task_ids) < JOBS and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        worker.stop()
    print(f"{JOBS} one-e-mail jobs in {seconds:.2f} s; {peer.most_data_at_once} at once")
    # One pool process, given one job at a time by Celery, each job one e-mail: without the
    # lookahead the server would never hold two messages at once.
    assert peer.most_data_at_once == 2  # both connections busy
    assert len(events.task_ids) == JOBS  # every job reported done, those taken ahead too
    client = redis.Redis.from_url(env["OUTBOX_REDIS_URL"])
    assert client.hlen("unacked") == 0  # every job acknowledged
    assert sum(int(client.llen(queue)) for queue in QUEUES.values()) == 0


def test_a_worker_killed_holding_a_job_it_took_loses_nothing(
    env: dict[str, str], peer: SmtpPeer
) -> None:
    configure(env, peer)
    peer.data_delay_seconds = 2.0
    worker = Service(["outbox", "worker", "--concurrency", "1"], env)
    try:
        worker.wait_for_output(" ready.")
        ids = enqueue_jobs(env, 3)
        deadline = time.monotonic() + 30
        while peer.most_data_at_once < 2:  # a job taken ahead is in flight
            assert time.monotonic() < deadline, worker.output[-3000:]
            time.sleep(0.05)
        for pid in [worker.pid, *child_pids(worker.pid)]:
            os.kill(pid, signal.SIGKILL)
    finally:
        worker.stop()
    peer.data_delay_seconds = 0.0
    again = Service(["outbox", "worker", "--concurrency", "1"], env)
    try:
        again.wait_for_output(" ready.")
        wait_until_sent(env, ids, again, timeout=60)
    finally:
        again.stop()
    received = {m.rcpt_tos for m in peer.messages}
    assert received == {(f"r{n}@example.com",) for n in range(3)}
