"""The sending limit holds for two real ``outbox worker`` instances together: configured with
the CLI as a user would (SMTP with OAuth 2.0 against the Exchange Online stand-in), a backlog
larger than a minute's limit goes out at the limit, none refused by the provider, none
failed, the rest waiting with the reason until the window allows. Takes about a minute and
a half: the limit is per minute."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import trustme

from peers.exchange_standin import ExchangeStandIn
from peers.graph_standin import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TENANT,
    GraphStandIn,
)
from peers.processes import Service, run_outbox
from peers.redis_server import RedisServer
from tests.support.environment import fresh_environment

MAILBOX = "robot@contoso.com"
PER_MINUTE = 3


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    return fresh_environment(
        redis_server.url, tmp_path_factory.mktemp("limits"), certificate_authority
    )


@pytest.fixture(scope="module")
def identity(server_certificate: trustme.LeafCert) -> Iterator[GraphStandIn]:
    with GraphStandIn(server_certificate) as running:
        yield running


@pytest.fixture(scope="module")
def exchange(
    server_certificate: trustme.LeafCert, identity: GraphStandIn
) -> Iterator[ExchangeStandIn]:
    # The stand-in counts a sliding minute, as Exchange Online does, at outbox's limit.
    with ExchangeStandIn(
        server_certificate,
        identity,
        [MAILBOX],
        messages_per_minute=PER_MINUTE,
        concurrent_submissions=None,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def two_workers(env: dict[str, str]) -> Iterator[list[Service]]:
    workers = [
        Service(["outbox", "worker", "--loglevel", "INFO", "--hostname", f"w{i}@%h"], env)
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_for_output(" ready.")
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def test_two_worker_instances_keep_one_limit_and_nothing_fails(
    env: dict[str, str],
    exchange: ExchangeStandIn,
    identity: GraphStandIn,
    two_workers: list[Service],
) -> None:
    saved = run_outbox(
        env,
        "settings",
        "set",
        "smtp",
        "--server",
        exchange.host,
        "--port",
        str(exchange.port),
        "--from-mailbox",
        MAILBOX,
        "--auth",
        "oauth2",
        "--tenant",
        DEFAULT_TENANT,
        "--client-id",
        DEFAULT_CLIENT_ID,
        "--client-secret-stdin",
        "--instance",
        identity.base_url,
        "--max-messages-per-minute",
        str(PER_MINUTE),
        stdin=f"{DEFAULT_CLIENT_SECRET}\n",
    )
    assert saved.returncode == 0, saved.stderr
    shown = json.loads(run_outbox(env, "settings", "show", "--json").stdout)
    assert (shown["auth"], shown["client_secret_set"]) == ("oauth2", True)
    assert DEFAULT_CLIENT_SECRET not in json.dumps(shown)
    assert run_outbox(env, "settings", "test-connection").returncode == 0

    ids = []
    for n in range(2 * PER_MINUTE):
        sent = run_outbox(env, "send", "--to", f"qa{n}@example.com", "--subject", f"run {n}",
                          "--text", "42 passed")  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        ids.append(sent.stdout.strip())
    exchange.wait_for_messages(PER_MINUTE, timeout=30)
    time.sleep(2)
    assert len(exchange.accepted_messages()) == PER_MINUTE  # the limit, across both workers
    waiting = [json.loads(run_outbox(env, "status", i, "--json").stdout) for i in ids]
    held = [s for s in waiting if s["status"] == "waiting"]
    assert len(held) == PER_MINUTE
    assert all(s["waiting_for"] == f"the sending limit, {PER_MINUTE} per minute" for s in held)
    assert "waiting for the sending limit" in run_outbox(env, "status", held[0]["id"]).stdout

    messages = exchange.wait_for_messages(2 * PER_MINUTE, timeout=90)
    assert exchange.refusals() == []
    assert exchange.max_messages_in_window(MAILBOX) <= PER_MINUTE
    arrivals = sorted(m.arrived_at for m in messages)
    # The second minute's e-mails went out as the first ones left the window, not later.
    assert 60 <= arrivals[PER_MINUTE] - arrivals[0] < 70
    finals = [json.loads(run_outbox(env, "status", i, "--json").stdout) for i in ids]
    assert [s["status"] for s in finals] == ["sent"] * len(ids)
    assert all(s["attempt_count"] == 1 for s in finals)  # waiting is not an attempt
