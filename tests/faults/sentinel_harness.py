"""One Sentinel fault run: a primary, two replicas and three sentinels, an SMTP peer, two
``outbox worker`` instances and ``outbox api``, with producers enqueueing over HTTP (each
e-mail with its idempotency key, retried on any error) while a fault happens."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import trustme

from config.api_keys import ApiKeyStore, Role
from peers.processes import Service
from peers.redis_server import free_port
from peers.sentinel import SentinelCluster
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.faults.harness import (
    FINAL,
    PASSWORD,
    USER,
    accepted_message_ids,
    smtp_settings,
)
from tests.support.environment import context_of, outbox_environment
from worker.records import DeliveryStatus, idempotency_key

PRODUCER = "load"
PRODUCER_THREADS = 8
# A producer retries a refused or unanswered enqueue after this long, with the same key.
RETRY_PAUSE_SECONDS = 0.25


@dataclass(frozen=True)
class SentinelReport:
    scenario: str
    load: int
    sent: int
    failed: int
    lost: int  # acknowledged (202) but not final at the end
    duplicates: int  # e-mails the peer accepted more than once, or sent for no acknowledged id
    in_flight: int  # deliveries in "sending" just before the fault
    seconds_to_final: float  # from the promotion (or the fault's end) until every one is final
    refused: int  # enqueue attempts of this load answered with an error or not at all

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.load:,} | {self.sent:,} | {self.failed:,} | {self.lost} "
            f"| {self.duplicates} | {self.in_flight} | {self.seconds_to_final:.1f} s "
            f"| {self.refused} |"
        )


@dataclass
class _Load:
    """What the producers were answered, per idempotency key."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> delivery id
    answers: collections.defaultdict[str, set[str]] = field(
        default_factory=lambda: collections.defaultdict(set)
    )
    refused: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # 5xx details
    without_retry_after: int = 0  # 5xx answers that did not say when to try again
    lock: threading.Lock = field(default_factory=threading.Lock)


class SentinelFaultRun:
    """Owns every process of one scenario; ``close`` stops them all."""

    def __init__(
        self,
        directory: Path,
        certificate_authority: trustme.CA,
        certificate: trustme.LeafCert,
        down_after_ms: int = 3000,
        /,  # so that no environment variable in ``overrides`` can be taken for a parameter
        **overrides: str,
    ) -> None:
        self.cluster = SentinelCluster(directory / "sentinel", down_after_ms=down_after_ms)
        self.cluster.start()
        self.peer: SmtpPeer = smtp_peer(
            tls="starttls", certificate=certificate, credentials={USER: PASSWORD}
        )
        self.peer.start()
        self.env = outbox_environment(
            self.cluster.url,
            directory,
            certificate_authority,
            **{"OUTBOX_MAX_ATTEMPTS": "8", **overrides},
        )
        self.context = context_of(self.env)
        self.context.settings_store.save(smtp_settings(self.peer))
        self.key = ApiKeyStore(self.context.redis).create(PRODUCER, Role.PRODUCER)
        self.workers: list[Service] = []
        self.api_port = free_port()
        self.api = Service(["outbox", "api", "--port", str(self.api_port)], self.env)
        self.api.wait_for_output("Uvicorn running", timeout=60)
        self.load = _Load()
        self._producers: list[threading.Thread] = []

    def start_workers(self, count: int = 2, concurrency: int = 2) -> None:
        started = [
            Service(["outbox", "worker", "--concurrency", str(concurrency)], self.env)
            for _ in range(count)
        ]
        for worker in started:
            worker.wait_for_output(" ready.", timeout=60)
        self.workers += started

    def start_load(
        self, count: int, *, name: str = "load", deadline_seconds: float = 180
    ) -> list[str]:
        """Producers post ``count`` e-mails over the API, each retried with its idempotency
        key (``name-N``) until it is acknowledged; returns the keys."""
        keys = [f"{name}-{i}" for i in range(count)]
        with self.load.lock:
            self.load.refused = 0
            self.load.errors.clear()
            self.load.without_retry_after = 0
        deadline = time.monotonic() + deadline_seconds
        for share in range(PRODUCER_THREADS):
            thread = threading.Thread(
                target=self._produce, args=(keys[share::PRODUCER_THREADS], deadline), daemon=True
            )
            thread.start()
            self._producers.append(thread)
        return keys

    def _produce(self, keys: list[str], deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=15) as client:
            for key in keys:
                body = {
                    "to": ["reader@example.com"],
                    "subject": f"sentinel load {key}",
                    "text": f"message {key}\n" * 20,
                }
                while time.monotonic() < deadline:
                    try:
                        answer = client.post(
                            "/api/emails", json=body, headers={**headers, "Idempotency-Key": key}
                        )
                    except httpx.HTTPError:
                        answer = None
                    with self.load.lock:
                        if answer is not None:
                            self.load.statuses[answer.status_code] += 1
                        if answer is not None and answer.status_code == 202:
                            delivery_id = answer.json()["id"]
                            self.load.acknowledged[key] = delivery_id
                            self.load.answers[key].add(delivery_id)
                            break
                        self.load.refused += 1
                        if answer is not None and answer.status_code >= 500:
                            self.load.errors[answer.json().get("detail", answer.text)] += 1
                            if "Retry-After" not in answer.headers:
                                self.load.without_retry_after += 1
                    time.sleep(RETRY_PAUSE_SECONDS)

    @property
    def acknowledged(self) -> int:
        with self.load.lock:
            return len(self.load.acknowledged)

    def wait_for_load(self, timeout: float = 240) -> None:
        for thread in self._producers:
            thread.join(timeout=timeout)
        assert not any(thread.is_alive() for thread in self._producers), "producers still busy"

    def in_flight(self) -> int:
        """Deliveries in ``sending`` now (read just before a fault)."""
        return self.context.deliveries.statuses(self.acknowledged_ids()).count(
            DeliveryStatus.SENDING
        )

    def acknowledged_ids(self, keys: Iterable[str] | None = None) -> list[str]:
        with self.load.lock:
            if keys is None:
                return list(self.load.acknowledged.values())
            return [self.load.acknowledged[key] for key in keys if key in self.load.acknowledged]

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout} s")
            time.sleep(0.1)

    def wait_until_final(self, keys: list[str], *, since: float, timeout: float = 90) -> float:
        """Seconds from ``since`` (a ``time.monotonic()``) until every acknowledged delivery
        of ``keys`` is final, or until the timeout (the report counts the rest)."""
        while time.monotonic() - since < timeout:
            try:
                statuses = self.context.deliveries.statuses(self.acknowledged_ids(keys))
            except redis.RedisError:  # still failing over: ask again
                statuses = []
            if statuses and all(status in FINAL for status in statuses):
                break
            time.sleep(0.25)
        return time.monotonic() - since

    def one_delivery_per_key(self, keys: list[str]) -> bool:
        """Every key was answered with one id only, and the record store maps it to that id."""
        if any(len(self.load.answers[key]) != 1 for key in keys):
            return False
        pipe = self.context.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(idempotency_key(key, PRODUCER))
        stored = [value.decode() if value else None for value in pipe.execute()]
        return stored == [self.load.acknowledged[key] for key in keys]

    def report(
        self, scenario: str, keys: list[str], *, in_flight: int, seconds_to_final: float
    ) -> SentinelReport:
        """The count for the e-mails of ``keys``; duplicates among every e-mail sent since
        ``mark_sent``."""
        ids = self.acknowledged_ids(keys)
        statuses = collections.Counter(self.context.deliveries.statuses(ids))
        accepted = collections.Counter(accepted_message_ids(self.peer))
        acknowledged = set(self.acknowledged_ids())
        # A delivery whose enqueue was never acknowledged (its key then got another one).
        sent_for_nothing = sum(
            count
            for message_id, count in accepted.items()
            if _delivery_id(message_id) not in acknowledged
        )
        return SentinelReport(
            scenario=scenario,
            load=len(keys),
            sent=statuses[DeliveryStatus.SENT],
            failed=statuses[DeliveryStatus.FAILED] + statuses[DeliveryStatus.PARTIALLY_SENT],
            lost=len(keys) - sum(statuses[s] for s in FINAL),
            duplicates=sum(n - 1 for n in accepted.values() if n > 1) + sent_for_nothing,
            in_flight=in_flight,
            seconds_to_final=seconds_to_final,
            refused=self.load.refused,
        )

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()
        self.peer.stop()
        self.cluster.close()


def _delivery_id(message_id: bytes) -> str:
    # outbox's Message-ID is "<{delivery id}@{domain}>".
    return message_id.decode().strip("<>").split("@", 1)[0]
