"""The Sentinel harness: real primaries, replicas and sentinels replicate, fail over and rejoin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.sentinel

from peers.sentinel import SentinelCluster

NAME = "outbox"
PROMOTION_SECONDS = 30
# A returning old primary is demoted on a sentinel's INFO round after it has said "master"
# for a while: about 2 s with the harness's fast timers, 10 s with Sentinel's own (6.2).
REJOIN_SECONDS = 30


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path, master_name=NAME) as running:
        yield running


@pytest.fixture
def guarded_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """Passwords on the data nodes and on the sentinels, as a production deployment has."""
    with SentinelCluster(
        tmp_path, master_name=NAME, password="node secret", sentinel_password="sentinel-secret"
    ) as running:
        yield running


def test_a_write_on_the_primary_reaches_both_replicas(cluster: SentinelCluster) -> None:
    ports = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in cluster.sentinels)
    assert cluster.url == f"redis+sentinel://{ports}/{NAME}/0"
    assert cluster.master_address() == ("127.0.0.1", cluster.primary.port)
    assert cluster.current_primary() is cluster.primary
    assert cluster.connected_replicas() == sorted(replica.port for replica in cluster.replicas)

    primary = cluster.primary.client(socket_timeout=10)
    primary.set("greeting", "hello")
    # WAIT: both replicas have acknowledged the write, so reading them is not a race.
    assert primary.wait(2, 5000) == 2
    for replica in cluster.replicas:
        assert replica.client().get("greeting") == "hello"
        assert replica.role() == "slave"


def test_a_killed_primary_is_replaced_and_rejoins_as_a_replica(
    guarded_cluster: SentinelCluster,
) -> None:
    cluster = guarded_cluster
    assert cluster.url.startswith("redis+sentinel://:node%20secret@127.0.0.1:")
    old = cluster.primary
    writer = old.client(socket_timeout=10)
    writer.set("before", "kept")
    assert writer.wait(2, 5000) == 2

    old.kill()
    elapsed = cluster.wait_for_promotion(old.port, timeout=PROMOTION_SECONDS)
    new = cluster.current_primary()
    assert new is not old
    assert new.port in {replica.port for replica in cluster.replicas}
    print(f"promoted {elapsed:.1f} s after SIGKILL")

    # What a client does: ask the sentinels (with their password) for the master.
    sentinel = redis.sentinel.Sentinel(
        cluster.sentinel_addresses,
        sentinel_kwargs={"password": "sentinel-secret", "socket_timeout": 1},
        password="node secret",
        socket_timeout=1,
    )
    master: redis.Redis = sentinel.master_for(NAME, decode_responses=True)
    assert master.get("before") == "kept"  # acknowledged by both replicas: not lost
    master.set("after", "written")
    assert new.client().get("after") == "written"
    with pytest.raises(redis.AuthenticationError):
        new.client(password=None).set("x", "1")

    # Restarted, it comes back as a master (nothing rewrote its config), then is demoted.
    old.start()
    rejoined = cluster.wait_for_replica(old, timeout=REJOIN_SECONDS)
    print(f"old primary replicating {rejoined:.1f} s after its restart")
    assert old.client().get("after") == "written"
    assert old.port in cluster.connected_replicas()


def test_a_stopped_primary_is_replaced_and_rejoins_when_continued(
    cluster: SentinelCluster,
) -> None:
    old = cluster.primary
    old.stop()
    started = time.monotonic()
    elapsed = cluster.wait_for_promotion(old.port, timeout=PROMOTION_SECONDS)
    assert time.monotonic() - started > cluster.down_after_ms / 1000
    new = cluster.current_primary()
    assert new is not old
    print(f"promoted {elapsed:.1f} s after SIGSTOP")
    master = cluster.sentinel().master_for(NAME)
    master.set("during", "the pause")

    old.cont()
    # Until the sentinels demote it, the continued old primary still takes writes, which its
    # full resync from the new primary then throws away: a split brain (about 10 s with
    # Sentinel's own timers).
    stale = old.client()
    assert stale.set("split", "lost")
    rejoined = cluster.wait_for_replica(old, timeout=REJOIN_SECONDS)
    print(f"old primary replicating {rejoined:.1f} s after SIGCONT")
    assert old.port in cluster.connected_replicas()
    assert old.client().get("during") == "the pause"
    assert new.client().get("split") is None
    assert old.client().get("split") is None
    with pytest.raises(redis.ReadOnlyError):
        old.client().set("split", "refused")


def test_the_sentinels_can_be_made_unreachable_and_brought_back(
    cluster: SentinelCluster,
) -> None:
    cluster.stop_sentinels()
    for sentinel in cluster.sentinels:
        assert sentinel.stopped
        # Stopped: the port still accepts connections, but nothing answers.
        with pytest.raises(redis.TimeoutError):
            sentinel.client(socket_timeout=0.2).ping()
    cluster.cont_sentinels()
    assert cluster.master_address() == ("127.0.0.1", cluster.primary.port)

    cluster.terminate_sentinels()
    with pytest.raises(LookupError, match="no sentinel named the master"):
        cluster.master_address()
    # Restarted from the configs they rewrote: they still know the replicas and each other.
    cluster.start_sentinels(timeout=10)
    assert cluster.master_address() == ("127.0.0.1", cluster.primary.port)
