"""Generated messages, hostile and unusual ones included, through every way in (the producer
API, the CLI's ``send`` and ``send --batch``, ``POST /api/emails``): each is delivered intact
to a real aiosmtpd server or refused with an error naming its field, never with a
traceback, and a refused one leaves nothing stored."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from config.errors import InvalidInputError
from peers.processes import run_outbox
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.message_input import MessageInput, describe_validation_error
from tasks.producer import Producer
from tests.support.generated_messages import FIELDS, assert_arrived_intact, messages
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import configure, parse
from worker.records import record_key

# The fixtures hold what every example shares (Redis, the peer, the worker); each example
# finds its own message by its Message-ID.
_SHARED_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
IN_PROCESS = settings(max_examples=150, deadline=None, suppress_health_check=_SHARED_FIXTURES)
# Each CLI example starts the command, about a second.
THROUGH_THE_CLI = settings(max_examples=8, deadline=None, suppress_health_check=_SHARED_FIXTURES)


@pytest.fixture
def utf8_peer(outbox_context: OutboxContext) -> Iterator[SmtpPeer]:
    """A peer that takes every valid address (SMTPUTF8 offered), configured as the server."""
    with smtp_peer(smtputf8=True) as peer:
        configure(outbox_context, peer)
        yield peer


def assert_names_a_field(problem: str) -> None:
    named = re.match(r"^([a-z_]+)[\[.:]", problem)
    assert named, problem
    assert named.group(1) in FIELDS, problem
    event(f"refused: {named.group(1)}")


def stored_records(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match=record_key("*"), count=1000))


def received(peer: SmtpPeer, message_id: str) -> EmailMessage:
    for message in peer.messages:
        mime = parse(message.data)
        if mime["Message-ID"] == message_id:
            return mime
    raise AssertionError(f"{message_id} never reached the peer")


def deliver_and_check(
    context: OutboxContext, worker: InProcessWorker, peer: SmtpPeer, delivery_id: str, sent: Any
) -> None:
    event("delivered")
    assert worker.deliver(delivery_id) == ["sent"]
    message_id = context.deliveries.get(delivery_id).message.message_id
    assert_arrived_intact(sent, received(peer, message_id))


@IN_PROCESS
@given(sent=messages())
def test_the_producer_api_delivers_intact_or_names_the_field(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    utf8_peer: SmtpPeer,
    redis_client: redis.Redis,
    sent: dict[str, Any],
) -> None:
    stored_before = stored_records(redis_client)
    try:
        created = producer.enqueue(MessageInput.model_validate(sent))
    except ValidationError as exc:
        assert_names_a_field(describe_validation_error(exc))
    except InvalidInputError as exc:
        assert_names_a_field(f"{exc.field}: {exc}")
    else:
        deliver_and_check(outbox_context, worker, utf8_peer, created.id, sent)
        return
    assert stored_records(redis_client) == stored_before  # nothing stored half-way


@pytest.fixture
def api(outbox_context: OutboxContext) -> Iterator[tuple[TestClient, dict[str, str]]]:
    key = ApiKeyStore(outbox_context.redis).create("scheduler", Role.PRODUCER)
    with TestClient(create_app(outbox_context)) as client:
        yield client, {"Authorization": f"Bearer {key}"}


@IN_PROCESS
@given(sent=messages())
def test_post_api_emails_delivers_intact_or_names_the_field(
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    utf8_peer: SmtpPeer,
    redis_client: redis.Redis,
    api: tuple[TestClient, dict[str, str]],
    sent: dict[str, Any],
) -> None:
    client, producer_key = api
    stored_before = stored_records(redis_client)
    answer = client.post("/api/emails", headers=producer_key, json=sent)
    if answer.status_code == 422:
        refusal = answer.json()
        assert_names_a_field(f"{refusal['field']}: {refusal}")
        assert stored_records(redis_client) == stored_before
        return
    assert answer.status_code == 202, answer.text
    deliver_and_check(outbox_context, worker, utf8_peer, answer.json()["id"], sent)


# The operating system cannot pass NUL in an argument: no user can give one to the CLI.
def _without_nul(message: dict[str, Any]) -> bool:
    return "\\u0000" not in json.dumps(message)  # JSON writes NUL as \u0000


def _cli_arguments(sent: dict[str, Any], tmp_path: Path) -> list[str]:
    arguments = ["send", "--subject", sent["subject"]]
    for field in ("to", "cc", "bcc"):
        for address in sent.get(field, []):
            arguments += [f"--{field}", address]
    if "text" in sent:
        arguments += ["--text", sent["text"]]
    if "html" in sent:
        html_file = tmp_path / "body.html"
        html_file.write_text(sent["html"], newline="")
        arguments += ["--html-file", str(html_file)]
    return arguments


# What `send` takes as options: recipients, subject and bodies.
_SEND_OPTIONS = frozenset({"to", "cc", "bcc", "subject", "text", "html"})
_CLI_MESSAGES = messages().map(lambda m: {k: v for k, v in m.items() if k in _SEND_OPTIONS})


@THROUGH_THE_CLI
@given(sent=_CLI_MESSAGES.filter(_without_nul))
def test_cli_send_delivers_intact_or_names_the_field(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    utf8_peer: SmtpPeer,
    redis_client: redis.Redis,
    tmp_path: Path,
    sent: dict[str, Any],
) -> None:
    stored_before = stored_records(redis_client)
    result = run_outbox(outbox_env, *_cli_arguments(sent, tmp_path))
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert_names_a_field(result.stderr.removeprefix("error: "))
        assert stored_records(redis_client) == stored_before
        return
    assert result.returncode == 0, result.stderr
    deliver_and_check(outbox_context, worker, utf8_peer, result.stdout.strip(), sent)


@THROUGH_THE_CLI
@given(batch=st.lists(messages(), min_size=1, max_size=8))
def test_cli_batch_delivers_every_line_intact_or_names_its_field(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    utf8_peer: SmtpPeer,
    tmp_path: Path,
    batch: list[dict[str, Any]],
) -> None:
    batch_file = tmp_path / "batch.jsonl"
    batch_file.write_text("".join(json.dumps(message) + "\n" for message in batch))
    result = run_outbox(outbox_env, "send", "--batch", str(batch_file), "--json")
    assert "Traceback" not in result.stderr
    rows = [json.loads(row) for row in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == list(range(1, len(batch) + 1))
    assert result.returncode == (2 if any("error" in row for row in rows) else 0), result.stderr
    for row, sent in zip(rows, batch, strict=True):
        if "error" in row:
            assert_names_a_field(row["error"])
        else:
            deliver_and_check(outbox_context, worker, utf8_peer, row["id"], sent)
