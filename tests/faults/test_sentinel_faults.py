"""The Sentinel fault scenarios: a failover (or the sentinels' outage) while e-mails are
enqueued over the API, each with its idempotency key and retried on any error, and sent by
two workers; nothing acknowledged may be lost.

`make faults` runs each with 1,000 e-mails and writes its row to ``OUTBOX_FAULTS_REPORT``;
`make test` runs the same scenarios with 300.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from peers.processes import run_outbox
from tests.faults.sentinel_harness import SentinelFaultRun, SentinelReport
from tests.faults.test_faults import FULL, TIMING

LOAD = 1000 if FULL else 300
# Two workers of two processes, each with at most 2 x 4 sends in flight.
MOST_IN_FLIGHT = 2 * 2 * 2 * 4
OUTAGE_SECONDS = 10


@pytest.fixture
def sentinel_run(
    tmp_path: Path, certificate_authority: trustme.CA, server_certificate: trustme.LeafCert
) -> Iterator[SentinelFaultRun]:
    run = SentinelFaultRun(tmp_path, certificate_authority, server_certificate, **TIMING.env)
    try:
        run.peer.data_delay_seconds = 0.02  # each connection sends about 40 e-mails a second
        run.start_workers()
        yield run
    finally:
        run.close()


def record(report: SentinelReport, run: SentinelFaultRun) -> None:
    print(report.row())
    for detail, count in run.load.errors.most_common(3):
        print(f"    {count} x {detail}")
    target = os.environ.get("OUTBOX_FAULTS_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(report.row() + "\n")


def errors_name_sentinel(run: SentinelFaultRun) -> bool:
    """What the producers were told while no primary answered names Sentinel and the master,
    and says when to try again."""
    master = f"(master '{run.cluster.master_name}')"
    named = all("Redis Sentinel at" in detail and master in detail for detail in run.load.errors)
    return named and run.load.without_retry_after == 0


def until_a_third_is_acknowledged(run: SentinelFaultRun) -> None:
    run.wait_until(lambda: run.acknowledged >= LOAD // 3, 60, f"{LOAD // 3} acknowledged")


def test_sigkill_of_the_primary_then_it_returns_as_a_replica(
    sentinel_run: SentinelFaultRun,
) -> None:
    run = sentinel_run
    keys = run.start_load(LOAD)
    until_a_third_is_acknowledged(run)
    in_flight = run.in_flight()
    old = run.cluster.current_primary()
    old.kill()
    run.cluster.wait_for_promotion(old.port)
    promoted_at = time.monotonic()
    run.wait_for_load()
    report = run.report(
        "SIGKILL of the primary at a third of the load",
        keys,
        in_flight=in_flight,
        seconds_to_final=run.wait_until_final(keys, since=promoted_at),
    )
    record(report, run)
    assert report.load == LOAD
    assert report.lost == 0
    assert report.failed == 0  # nothing is marked failed for a failover
    assert report.duplicates <= MOST_IN_FLIGHT
    assert report.seconds_to_final <= 60
    assert run.one_delivery_per_key(keys)
    assert errors_name_sentinel(run)

    # The old primary comes back: the sentinels make it a replica; the workers see nothing.
    sent_before = len(run.peer.messages)
    more = run.start_load(LOAD, name="after")
    old.start()
    returned_at = time.monotonic()
    run.cluster.wait_for_replica(old, timeout=60)
    run.wait_for_load()
    rejoined = run.report(
        "the old primary returns (as a replica)",
        more,
        in_flight=0,
        seconds_to_final=run.wait_until_final(more, since=returned_at),
    )
    record(rejoined, run)
    assert rejoined.lost == 0
    assert rejoined.failed == 0
    assert rejoined.refused == 0
    assert len(run.peer.messages) - sent_before == LOAD  # no duplicates either
    assert run.one_delivery_per_key(more)


def test_sigstop_of_the_primary_for_10_seconds(sentinel_run: SentinelFaultRun) -> None:
    run = sentinel_run
    keys = run.start_load(LOAD)
    until_a_third_is_acknowledged(run)
    in_flight = run.in_flight()
    old = run.cluster.current_primary()
    stopped_at = time.monotonic()
    old.stop()
    run.cluster.wait_for_promotion(old.port)
    promoted_at = time.monotonic()
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
    old.cont()
    run.cluster.wait_for_replica(old, timeout=60)
    run.wait_for_load()
    report = run.report(
        "SIGSTOP of the primary for 10 s, then SIGCONT",
        keys,
        in_flight=in_flight,
        seconds_to_final=run.wait_until_final(keys, since=promoted_at),
    )
    record(report, run)
    assert report.lost == 0
    assert report.failed == 0  # nothing is marked failed for a failover
    assert report.duplicates <= MOST_IN_FLIGHT
    assert report.seconds_to_final <= 60
    assert run.one_delivery_per_key(keys)
    assert errors_name_sentinel(run)


def test_a_promotion_while_producers_enqueue_and_retry(sentinel_run: SentinelFaultRun) -> None:
    run = sentinel_run
    keys = run.start_load(LOAD)
    until_a_third_is_acknowledged(run)
    in_flight = run.in_flight()
    old = run.cluster.current_primary()
    # A planned promotion (maintenance): the sentinels hand the primary's role to a replica.
    run.cluster.sentinels[0].sentinel("FAILOVER", run.cluster.master_name)
    run.cluster.wait_for_promotion(old.port)
    promoted_at = time.monotonic()
    run.wait_for_load()
    report = run.report(
        "promotion (SENTINEL FAILOVER) while producers enqueue and retry",
        keys,
        in_flight=in_flight,
        seconds_to_final=run.wait_until_final(keys, since=promoted_at),
    )
    record(report, run)
    assert report.lost == 0
    assert report.failed == 0  # nothing is marked failed for a failover
    assert report.duplicates <= MOST_IN_FLIGHT
    assert run.one_delivery_per_key(keys)
    assert errors_name_sentinel(run)


def test_every_sentinel_unreachable_then_back(sentinel_run: SentinelFaultRun) -> None:
    run = sentinel_run
    keys = run.start_load(LOAD)
    until_a_third_is_acknowledged(run)
    run.cluster.terminate_sentinels()
    down_at = time.monotonic()
    # A process that must ask the sentinels now (a new CLI command) is told who is missing.
    listed = run_outbox(run.env, "list")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    run.cluster.start_sentinels()
    back_at = time.monotonic()
    run.wait_for_load()
    report = run.report(
        "every sentinel unreachable for 10 s",
        keys,
        in_flight=0,
        seconds_to_final=run.wait_until_final(keys, since=back_at),
    )
    record(report, run)
    assert listed.returncode != 0
    sentinels = ", ".join(f"{host}:{port}" for host, port in run.cluster.sentinel_addresses)
    assert f"Redis Sentinel at {sentinels} (master 'outbox') is unreachable" in listed.stderr
    assert "no sentinel answered" in listed.stderr
    assert report.lost == 0
    assert report.failed == 0  # nothing is marked failed for a failover
    assert report.duplicates == 0
    assert run.one_delivery_per_key(keys)
    assert errors_name_sentinel(run)
