"""``send --batch`` in process: chunked enqueueing, per-line results, and a broker failure
half-way that leaves every stored record either queued or failed with the reason."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import pytest

from tasks.cli.batch import CHUNK_MESSAGES, send_batch
from tasks.context import OutboxContext
from tasks.producer import CHUNK_SIZE, Producer
from worker.records import DeliveryStatus, Priority

# The producer publishes a task per CHUNK_SIZE messages: this many for one chunk of the file.
PUBLISHES_PER_CHUNK = CHUNK_MESSAGES // CHUNK_SIZE


class BrokerFailingAfter:
    """Takes the first ``calls`` publishes, then fails as a broker that went away."""

    def __init__(self, calls: int) -> None:
        self.published: list[str] = []
        self._calls = calls

    def __call__(self, chunks: Sequence[Sequence[str]], *, priority: Priority) -> None:
        if self._calls == 0:
            raise ConnectionError("broker unreachable")
        self._calls -= 1
        self.published += [delivery_id for chunk in chunks for delivery_id in chunk]


def batch_of(count: int) -> io.BytesIO:
    lines = (
        json.dumps({"to": ["a@example.com"], "subject": f"m{n}", "text": "x"}) for n in range(count)
    )
    return io.BytesIO("".join(line + "\n" for line in lines).encode())


def producer_with(context: OutboxContext, publish: BrokerFailingAfter) -> Producer:
    return Producer(
        context.deliveries,
        publish,
        message_id_domain="outbox.test",
        max_message_bytes=context.settings.max_message_bytes,
    )


def test_each_chunk_is_published_as_it_is_read(
    outbox_context: OutboxContext, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = BrokerFailingAfter(calls=3 * PUBLISHES_PER_CHUNK)
    report = send_batch(
        batch_of(CHUNK_MESSAGES * 2 + 1), producer_with(outbox_context, broker), as_json=True
    )
    assert (report.enqueued, report.refused) == (CHUNK_MESSAGES * 2 + 1, 0)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == broker.published


def test_a_broker_failure_half_way_leaves_nothing_stored_and_unqueued(
    outbox_context: OutboxContext, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = BrokerFailingAfter(calls=PUBLISHES_PER_CHUNK)  # the first chunk of the file
    with pytest.raises(ConnectionError):
        send_batch(
            batch_of(CHUNK_MESSAGES * 3), producer_with(outbox_context, broker), as_json=False
        )
    printed = capsys.readouterr()
    assert printed.out.split() == broker.published  # the first chunk, reported
    assert f"stopped at line {CHUNK_MESSAGES + 1}" in printed.err
    deliveries = outbox_context.deliveries
    queued = deliveries.ids_with_status(DeliveryStatus.QUEUED)
    failed = deliveries.ids_with_status(DeliveryStatus.FAILED)
    assert sorted(queued) == sorted(broker.published)
    # The second chunk's first task: stored, then marked; nothing after it was stored.
    assert len(failed) == CHUNK_SIZE
    assert all("could not be queued" in (deliveries.get(i).last_error or "") for i in failed)
