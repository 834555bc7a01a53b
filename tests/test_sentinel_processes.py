"""Every part on Redis Sentinel, as `make run` starts it: the Procfile's worker, Flower and API
(under honcho) and the CLI, on a primary, two replicas and three sentinels with passwords;
then a failover that none of them is restarted for."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from peers.processes import ROOT, Service, run_outbox
from peers.redis_server import free_port
from peers.sentinel import SentinelCluster
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.faults.harness import PASSWORD, USER
from tests.support.cli_settings import configure_smtp
from tests.support.environment import outbox_environment

REDIS_PASSWORD = "redis-Pa55-word"
SENTINEL_PASSWORD = "sentinel-Pa55-word"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(
        tmp_path_factory.mktemp("sentinel"),
        down_after_ms=2000,
        password=REDIS_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def peer(server_certificate: trustme.LeafCert) -> Iterator[SmtpPeer]:
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={USER: PASSWORD}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def env(
    cluster: SentinelCluster,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    assert f":{REDIS_PASSWORD}@" in cluster.url
    return outbox_environment(
        cluster.url,
        tmp_path_factory.mktemp("outbox"),
        certificate_authority,
        OUTBOX_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        OUTBOX_FLOWER_PORT=str(free_port()),
        OUTBOX_API_PORT=str(free_port()),
        FLOWER_UNAUTHENTICATED_API="true",
    )


@pytest.fixture(scope="module")
def services(env: dict[str, str], peer: SmtpPeer) -> Iterator[Service]:
    configure_smtp(env, peer, USER, PASSWORD)
    service = Service(["honcho", "start", "-f", str(ROOT / "Procfile")], env)
    try:
        service.wait_for_output(" ready.", "Visit me at", "Uvicorn running on")
        yield service
    finally:
        service.stop()


def send_and_wait(env: dict[str, str], to: str) -> str:
    sent = run_outbox(
        env, "send", "--to", to, "--subject", "On Sentinel", "--text", "x", "--wait", "30"
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.split()[1:2] == ["sent"], sent.stdout
    return sent.stdout.split()[0]


def producer_key(env: dict[str, str], name: str) -> str:
    created = run_outbox(env, "keys", "create", "--role", "producer", "--name", name)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def post_email(env: dict[str, str], key: str, to: str) -> str:
    answer = httpx.post(
        f"http://127.0.0.1:{env['OUTBOX_API_PORT']}/api/emails",
        headers={"Authorization": f"Bearer {key}"},
        json={"to": [to], "subject": "Over HTTP on Sentinel", "text": "x"},
        timeout=15,
    )
    assert answer.status_code == 202, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def status_of(env: dict[str, str], delivery_id: str) -> str:
    shown = run_outbox(env, "status", delivery_id, "--json")
    assert shown.returncode == 0, shown.stderr
    status: str = json.loads(shown.stdout)["status"]
    return status


def wait_for_sent(env: dict[str, str], delivery_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := status_of(env, delivery_id)) != "sent":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def flower_queue_lengths(env: dict[str, str]) -> dict[str, int]:
    url = f"http://127.0.0.1:{env['OUTBOX_FLOWER_PORT']}/api/queues/length"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    assert REDIS_PASSWORD not in body
    assert SENTINEL_PASSWORD not in body
    return {queue["name"]: queue["messages"] for queue in json.loads(body)["active_queues"]}


def test_the_cli_worker_api_and_flower_work_on_sentinel(
    env: dict[str, str], services: Service
) -> None:
    send_and_wait(env, "cli@example.com")
    wait_for_sent(env, post_email(env, producer_key(env, "http"), "http@example.com"))
    # Flower reads the queues through the sentinels too.
    assert set(flower_queue_lengths(env)) >= {"outbox.high", "outbox", "outbox.low"}


def test_every_part_follows_a_failover_without_a_restart(
    env: dict[str, str], services: Service, cluster: SentinelCluster
) -> None:
    key = producer_key(env, "after-failover")
    old = cluster.current_primary()
    old.kill()
    cluster.wait_for_promotion(old.port)
    # The same API, worker and Flower processes, now on the promoted replica.
    deadline = time.monotonic() + 60
    while True:
        try:
            delivery_id = post_email(env, key, "after@example.com")
            break
        except AssertionError:
            # 503 while the API's connections still pointed at the dead primary.
            assert time.monotonic() < deadline
            time.sleep(0.5)
    wait_for_sent(env, delivery_id, timeout=60)
    send_and_wait(env, "cli-after@example.com")
    assert set(flower_queue_lengths(env)) >= {"outbox"}
    for secret in (REDIS_PASSWORD, SENTINEL_PASSWORD):
        assert secret not in services.output


def test_a_cli_command_names_sentinel_when_no_primary_is_known(
    env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = {**env, "OUTBOX_REDIS_URL": f"redis+sentinel://127.0.0.1:{free_port()}/outbox"}
    listed = run_outbox(elsewhere, "list")
    assert listed.returncode != 0
    assert "Redis Sentinel at 127.0.0.1:" in listed.stderr
    assert "(master 'outbox') is unreachable: no sentinel answered" in listed.stderr
