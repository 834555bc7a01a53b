"""Shared fixtures: a real Redis per test session, a clean database and environment per test."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
import trustme

from peers.redis_server import RedisServer
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.producer import Producer
from tests.support.environment import outbox_environment
from tests.support.in_process_worker import InProcessWorker
from worker.records import Priority


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def outbox_env(
    redis_client: redis.Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    """The OUTBOX_* environment of a process using the test Redis, fast retries."""
    env = outbox_environment(redis_server.url, tmp_path, certificate_authority)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def client_tls_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    """A client outbox_context trusting only the test CA."""
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def server_certificate(certificate_authority: trustme.CA) -> trustme.LeafCert:
    return certificate_authority.issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def outbox_context(outbox_env: dict[str, str]) -> OutboxContext:
    return OutboxContext.from_environment()


class CollectingPublisher:
    """Stands in for the broker in producer tests: keeps the chunks of ids it was given."""

    def __init__(self) -> None:
        self.chunks: list[list[str]] = []
        self.priorities: list[Priority] = []  # one per chunk

    def __call__(self, chunks: Sequence[Sequence[str]], *, priority: Priority) -> None:
        self.chunks += [list(chunk) for chunk in chunks]
        self.priorities += [priority] * len(chunks)


@pytest.fixture
def publisher() -> CollectingPublisher:
    return CollectingPublisher()


@pytest.fixture
def producer(outbox_context: OutboxContext, publisher: CollectingPublisher) -> Producer:
    return Producer(
        outbox_context.deliveries,
        publisher,
        message_id_domain="outbox.test",
        max_message_bytes=outbox_context.settings.max_message_bytes,
    )


@pytest.fixture
def worker(outbox_context: OutboxContext) -> Iterator[InProcessWorker]:
    running = InProcessWorker(outbox_context)
    yield running
    running.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests run last: Playwright's sync API keeps an event loop running in the
    main thread until the session ends, and a later ``asyncio.run`` would trip over it."""
    items.sort(key=lambda item: item.path.parent.name == "browser")


@pytest.fixture
def plain_peer() -> Iterator[SmtpPeer]:
    """A plain-text aiosmtpd server without AUTH."""
    with smtp_peer() as peer:
        yield peer
