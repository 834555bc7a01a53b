"""Acknowledged means replicated: on Sentinel an enqueue is answered only once a replica holds
it, refused while none is in sync, and the workers go on without replicas."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.fernet import Fernet
from pydantic import SecretStr

from config.api_keys import ApiKeyStore, Role
from config.mail_settings import SmtpSettings
from config.process import ProcessSettings
from config.redis_location import RedisLocation
from peers.sentinel import SentinelCluster
from peers.smtp_peer import SmtpPeer
from tasks.celery_app import producer_for
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tests.support.in_process_worker import InProcessWorker
from tests.support.served_api import served_api
from worker.records import DeliveryStatus, record_key
from worker.records.replication import (
    FailoverWatch,
    failing_over,
    primary_named,
    sentinel_state,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path_factory.mktemp("sentinel"), replicas=1) as running:
        yield running


@pytest.fixture
def context(
    cluster: SentinelCluster, tmp_path: Path, certificate_authority: trustme.CA
) -> OutboxContext:
    cluster.current_primary().client().flushall()
    for replica in cluster.replicas:
        if replica.stopped:
            replica.cont()
        if not replica.running:
            replica.start()
        cluster.wait_for_replica(replica)
    return OutboxContext.from_settings(
        ProcessSettings(
            redis_url=cluster.url,
            secret_key=SecretStr(Fernet.generate_key().decode()),
            data_dir=tmp_path / "data",
        )
    )


@pytest.fixture
def api(context: OutboxContext) -> Iterator[tuple[httpx.Client, str]]:
    key = ApiKeyStore(context.redis).create("producer", Role.PRODUCER)
    with (
        served_api(context) as (host, port),
        httpx.Client(base_url=f"http://{host}:{port}", timeout=15) as client,
    ):
        yield client, key


def post(api: tuple[httpx.Client, str], idempotency_key: str) -> httpx.Response:
    client, key = api
    return client.post(
        "/api/emails",
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key},
        json={"to": ["reader@example.com"], "subject": "Replicated", "text": "x"},
    )


def post_until_accepted(api: tuple[httpx.Client, str], idempotency_key: str) -> httpx.Response:
    """The primary's view of its replicas is believed for a second: a retry right after a
    replica returned may be refused once more."""
    deadline = time.monotonic() + 5
    while (answer := post(api, idempotency_key)).status_code == 503:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    assert answer.status_code == 202, answer.text
    return answer


def stored_deliveries(context: OutboxContext) -> int:
    return len(context.deliveries.ids_with_status(DeliveryStatus.QUEUED))


def test_the_default_on_sentinel_is_one_replica(context: OutboxContext) -> None:
    assert context.settings.min_replicas == 1
    assert context.replicas.min_replicas == 1


def test_an_enqueue_is_acknowledged_once_a_replica_holds_it(
    api: tuple[httpx.Client, str], cluster: SentinelCluster
) -> None:
    answer = post(api, "first")
    assert answer.status_code == 202, answer.text
    # The record and its task are on the replica by the time the producer has the id.
    replica = cluster.replicas[0].client()
    assert replica.exists(record_key(answer.json()["id"]))
    assert replica.llen("outbox") == 1


def test_with_no_replica_in_sync_an_enqueue_is_refused_and_nothing_stored(
    api: tuple[httpx.Client, str], cluster: SentinelCluster, context: OutboxContext
) -> None:
    cluster.replicas[0].kill()
    deadline = time.monotonic() + 10
    while (answer := post(api, "refused")).status_code == 202:
        assert time.monotonic() < deadline, "still acknowledged without a replica"
        time.sleep(0.2)
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) >= 1
    detail = answer.json()["detail"]
    assert "(master 'outbox') has 0 replica(s) in sync" in detail
    assert "fewer than OUTBOX_REDIS_MIN_REPLICAS=1" in detail
    assert "nothing was stored" in detail
    # The acknowledged one of the loop's first tries (if any) is all there is.
    stored = stored_deliveries(context)
    assert stored <= 1

    cluster.replicas[0].start()
    cluster.wait_for_replica(cluster.replicas[0])
    post_until_accepted(api, "refused")
    assert stored_deliveries(context) <= stored + 1


def test_a_replica_that_does_not_acknowledge_in_time_is_a_503_and_the_retry_is_safe(
    api: tuple[httpx.Client, str], cluster: SentinelCluster, context: OutboxContext
) -> None:
    # Stopped, the replica still looks in sync for a few seconds, but acknowledges nothing.
    cluster.replicas[0].stop()
    started = time.monotonic()
    answer = post(api, "slow")
    waited = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert "acknowledged the write within 1000 ms" in answer.json()["detail"]
    assert "try again with the same idempotency key" in answer.json()["detail"]
    assert 1.0 <= waited < 5
    [kept] = context.deliveries.ids_with_status(DeliveryStatus.QUEUED)

    cluster.replicas[0].cont()
    cluster.wait_for_replica(cluster.replicas[0])
    assert post_until_accepted(api, "slow").json()["id"] == kept


def test_workers_go_on_without_replicas_and_log_it(
    context: OutboxContext,
    cluster: SentinelCluster,
    plain_peer: SmtpPeer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    context.settings_store.save(
        SmtpSettings(server=plain_peer.host, port=plain_peer.port, from_mailbox="r@example.com")
    )
    ids = [
        created.id
        for created in producer_for(context).enqueue_many(
            [MessageInput(to=["reader@example.com"], subject="s", text="x") for _ in range(3)]
        )
    ]
    cluster.replicas[0].kill()
    worker = InProcessWorker(context)
    try:
        with caplog.at_level(logging.WARNING):
            outcomes = worker.deliver(*ids)
    finally:
        worker.close()
    assert [outcome.value for outcome in outcomes] == ["sent"] * 3
    assert context.deliveries.statuses(ids) == [DeliveryStatus.SENT] * 3
    assert "acknowledged by 0 of the 1 Redis replica(s)" in caplog.text


def test_a_failover_under_way_is_seen_by_asking_every_sentinel_at_once(tmp_path: Path) -> None:
    with SentinelCluster(tmp_path, replicas=1) as own:
        location = RedisLocation(own.url)
        watch = FailoverWatch(location.sentinel_clients(), own.master_name)
        try:
            assert not watch.under_way()
            own.sentinels[0].sentinel("FAILOVER", own.master_name)
            assert watch.under_way()
            # A sentinel that does not answer is left out for a while, not waited for.
            own.sentinels[0].terminate()
            started = time.monotonic()
            watch.under_way()
            watch.under_way()
            assert time.monotonic() - started < 2
        finally:
            watch.close()


def test_sentinel_replies_are_read_in_both_protocols() -> None:
    resp2 = [b"name", b"outbox", b"ip", b"10.0.0.5", b"port", b"6379", b"flags", b"master"]
    resp3 = {b"name": b"outbox", b"ip": b"10.0.0.5", b"port": b"6379", b"flags": b"master"}
    for reply in (resp2, resp3):
        state = sentinel_state(reply)
        assert primary_named(state) == ("10.0.0.5", 6379)
        assert not failing_over(state)
    assert failing_over({"flags": "master,failover_in_progress"})
    assert failing_over({"flags": {"master", "failover_in_progress"}})
