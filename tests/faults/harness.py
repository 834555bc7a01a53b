"""One fault run: a durable Redis, an SMTP peer (STARTTLS + AUTH) that keeps every accepted
message, real ``outbox worker`` processes, a load of e-mails, and the count at the end."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trustme
from pydantic import SecretStr

from config.mail_settings import SmtpSettings, TlsMode
from peers.processes import Service, child_pids, rss_mb
from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.message_input import MessageInput
from tests.support.environment import context_of, outbox_environment
from worker.records import DeliveryStatus

USER, PASSWORD = "robot", "fault-Suite-pa55"
_MESSAGE_ID = re.compile(rb"^Message-ID: *(\S+)\r?$", re.MULTILINE | re.IGNORECASE)
FINAL = {DeliveryStatus.SENT, DeliveryStatus.PARTIALLY_SENT, DeliveryStatus.FAILED}


@dataclass(frozen=True)
class Report:
    scenario: str
    load: int
    sent: int
    failed: int
    lost: int  # neither sent nor failed at the end
    duplicates: int  # Message-IDs the peer accepted more than once
    seconds_to_final: float
    worker_rss_mb: float
    redis_mb: float

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.load:,} | {self.sent:,} | {self.failed:,} | {self.lost} "
            f"| {self.duplicates} | {self.seconds_to_final:.1f} s | {self.worker_rss_mb:.0f} MB "
            f"| {self.redis_mb:.0f} MB |"
        )


class FaultRun:
    """Owns every process of one scenario; ``close`` stops them all."""

    def __init__(
        self,
        directory: Path,
        certificate_authority: trustme.CA,
        certificate: trustme.LeafCert,
        **overrides: str,
    ) -> None:
        self.redis = RedisServer(directory / "redis-data", durable=True)
        (directory / "redis-data").mkdir()
        self.redis.start()
        self.peer: SmtpPeer = smtp_peer(
            tls="starttls", certificate=certificate, credentials={USER: PASSWORD}
        )
        self.peer.start()
        self.env = outbox_environment(
            self.redis.url,
            directory,
            certificate_authority,
            **{"OUTBOX_MAX_ATTEMPTS": "8", **overrides},  # outbox's default attempt limit
        )
        self.context = context_of(self.env)
        self.context.settings_store.save(smtp_settings(self.peer))
        self.workers: list[Service] = []
        self._peak_rss = 0.0
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def start_worker(self, concurrency: int = 2) -> Service:
        worker = Service(["outbox", "worker", "--concurrency", str(concurrency)], self.env)
        worker.wait_for_output(" ready.", timeout=60)
        self.workers.append(worker)
        return worker

    def enqueue(self, count: int, *, to: str = "reader@example.com") -> list[str]:
        from tasks.celery_app import producer_for

        producer = producer_for(self.context)
        messages = [
            MessageInput(to=[to], subject=f"fault load {i}", text=f"message {i}\n" * 20)
            for i in range(count)
        ]
        ids: list[str] = []
        for start in range(0, count, 1000):
            ids += [c.id for c in producer.enqueue_many(messages[start : start + 1000])]
        return ids

    def statuses(self, ids: list[str]) -> collections.Counter[DeliveryStatus | None]:
        found: collections.Counter[DeliveryStatus | None] = collections.Counter()
        for start in range(0, len(ids), 5000):
            found.update(self.context.deliveries.statuses(ids[start : start + 5000]))
        return found

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout} s")
            time.sleep(0.25)

    def wait_until_final(self, ids: list[str], timeout: float) -> float:
        """Seconds until every delivery is final, or the timeout (the report counts the rest)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            counts = self.statuses(ids)
            if sum(counts[s] for s in FINAL) == len(ids):
                break
            time.sleep(0.5)
        return time.monotonic() - started

    def wait_until_sent(self, ids: list[str], at_least: int = 1) -> None:
        self.wait_until(
            lambda: self.statuses(ids)[DeliveryStatus.SENT] >= at_least,
            30,
            f"{at_least} sent",
        )

    def report(self, scenario: str, ids: list[str], seconds_to_final: float) -> Report:
        counts = self.statuses(ids)
        accepted = collections.Counter(self.accepted_message_ids())
        return Report(
            scenario=scenario,
            load=len(ids),
            sent=counts[DeliveryStatus.SENT],
            failed=counts[DeliveryStatus.FAILED] + counts[DeliveryStatus.PARTIALLY_SENT],
            lost=len(ids) - sum(counts[s] for s in FINAL),
            duplicates=sum(n - 1 for n in accepted.values() if n > 1),
            seconds_to_final=seconds_to_final,
            worker_rss_mb=self._peak_rss,
            redis_mb=self.redis.used_memory() / 1e6,
        )

    def accepted_message_ids(self) -> Iterable[bytes]:
        return accepted_message_ids(self.peer)

    def pool_pids(self, worker: Service) -> list[int]:
        return child_pids(worker.pid)

    def close(self) -> None:
        self._sampling = False
        for worker in self.workers:
            worker.stop()
        self.peer.stop()
        self.redis.stop()

    def _sample_rss(self) -> None:
        while self._sampling:
            for worker in list(self.workers):
                for pid in (worker.pid, *child_pids(worker.pid)):
                    self._peak_rss = max(self._peak_rss, rss_mb(pid))
            time.sleep(0.5)


def smtp_settings(peer: SmtpPeer) -> SmtpSettings:
    """Mail settings for the fault suite's peer: STARTTLS with AUTH."""
    return SmtpSettings(
        server=peer.host,
        port=peer.port,
        from_mailbox="robot@example.com",
        username=USER,
        password=SecretStr(PASSWORD),
        tls=TlsMode.STARTTLS,
    )


def accepted_message_ids(peer: SmtpPeer) -> Iterable[bytes]:
    """The Message-ID of every message the peer accepted, once per time it accepted it."""
    for message in list(peer.messages):
        found = _MESSAGE_ID.search(message.data)
        if found:
            yield found.group(1)
