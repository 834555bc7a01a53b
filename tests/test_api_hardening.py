"""What a hostile caller or a revoked administrator can no longer do through the HTTP API:
revived sessions, other producers' deliveries, unlimited sending, unbounded bodies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import CSRF_HEADER
from config.api_keys import ApiKeyStore, KeyLimits, Role
from config.sessions import SessionStore
from peers.processes import run_outbox
from tasks.context import OutboxContext
from tests.support.served_api import served_api
from worker.records.codec import as_text

MESSAGE = {"to": ["a@example.com"], "subject": "Run results", "text": "All green."}


@pytest.fixture
def client(outbox_context: OutboxContext) -> Iterator[TestClient]:
    with TestClient(create_app(outbox_context)) as running:
        yield running


@pytest.fixture
def keys(outbox_context: OutboxContext) -> ApiKeyStore:
    return ApiKeyStore(outbox_context.redis)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sign_in(client: TestClient, key: str) -> str:
    """Sign in on the page; the session's CSRF token, read off the page as its script does."""
    client.post("/signin", data={"key": key})
    page: str = client.get("/settings/mail").text
    marker = 'name="csrf-token" content="'
    return page[page.index(marker) + len(marker) :].split('"', 1)[0]


# --- sessions --------------------------------------------------------------------------------


def test_a_revoked_admins_session_stays_dead_when_the_name_comes_back(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    sign_in(client, keys.create("ann", Role.ADMIN))
    assert client.get("/api/emails").status_code == 200
    keys.revoke("ann")
    assert redis_client.keys("outbox:session:*") == []  # revoking deleted the session
    for _ in range(3):  # the old cookie keeps polling
        assert client.get("/api/emails").status_code == 401
    keys.create("ann", Role.ADMIN)  # a new key under the old name is another key
    assert client.get("/api/emails").status_code == 401
    assert client.get("/settings/mail").text.count('name="key"') == 1  # the sign-in form


def test_a_session_is_bound_to_its_key_even_if_it_outlives_the_revocation(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    """A session record that survived the revocation (written by an older version, restored
    from a backup) still does not open for a key created again under the name."""
    sign_in(client, keys.create("ann", Role.ADMIN))
    [session_key] = redis_client.keys("outbox:session:*")
    session = redis_client.get(session_key)
    assert session is not None
    keys.revoke("ann")
    redis_client.set(session_key, session)
    keys.create("ann", Role.ADMIN)
    assert client.get("/api/emails").status_code == 401


def test_sessions_end_when_idle_and_after_their_lifetime_however_busy(
    redis_client: redis.Redis,
) -> None:
    now = [1_000_000.0]
    store = SessionStore(
        redis_client, idle_seconds=600, lifetime_seconds=3600, clock=lambda: now[0]
    )
    token, session = store.create("ann", "hash-of-anns-key")
    assert store.cookie_max_age(session) == 3600
    for _ in range(6):  # used every nine minutes: never idle for ten
        now[0] += 540
        found = store.get(token)
        assert found is not None
        store.touch(token, found)
        assert 0 < redis_client.ttl(next(iter(redis_client.keys("outbox:session:*")))) <= 600
    now[0] += 540  # 3780 s after sign-in: past its lifetime although it was just used
    assert store.get(token) is None
    idle_token, _ = store.create("bob", "hash-of-bobs-key")
    assert store.get(idle_token) is not None
    # Idle expiry is Redis' own: the key's TTL is the idle time, never past the lifetime.
    now[0] += 3000
    assert store.get(idle_token) is not None  # Redis has not expired it in this fake time
    now[0] += 700
    assert store.get(idle_token) is None


def test_the_session_cookie_lives_no_longer_than_the_session(
    client: TestClient, keys: ApiKeyStore
) -> None:
    answer = client.post(
        "/signin", data={"key": keys.create("ann", Role.ADMIN)}, follow_redirects=False
    )
    cookie = answer.headers["set-cookie"]
    assert "Max-Age=43200" in cookie  # 12 h, the default lifetime
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie


@pytest.mark.parametrize("token", ["zürich", "\u2603" * 43, "ü"])
def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis, token: str
) -> None:
    sign_in(client, keys.create("ann", Role.ADMIN))
    answer = client.post(
        "/api/emails",
        json=MESSAGE,
        headers={CSRF_HEADER: token.encode()},
    )
    assert answer.status_code == 403
    assert CSRF_HEADER in answer.json()["detail"]
    signed_out = client.post("/signout", data={"csrf_token": token}, follow_redirects=False)
    assert signed_out.status_code == 303
    assert len(redis_client.keys("outbox:session:*")) == 1  # a wrong token ends no session


# --- producers see their own -------------------------------------------------------------


def test_a_producer_reads_and_lists_only_its_own_deliveries(
    client: TestClient, keys: ApiKeyStore
) -> None:
    ci, billing = (
        bearer(keys.create("ci", Role.PRODUCER)),
        bearer(keys.create("billing", Role.PRODUCER)),
    )
    admin = bearer(keys.create("ann", Role.ADMIN))
    ours = client.post("/api/emails", headers=ci, json=MESSAGE).json()["id"]
    theirs = client.post("/api/emails", headers=billing, json=MESSAGE).json()["id"]

    assert client.get(f"/api/emails/{ours}", headers=ci).json()["created_by"] == "ci"
    hidden = client.get(f"/api/emails/{theirs}", headers=ci)
    assert hidden.status_code == 404  # as if it did not exist: no id probing
    assert [d["id"] for d in client.get("/api/emails", headers=ci).json()["items"]] == [ours]
    queued = client.get("/api/emails", headers=ci, params={"status": "queued"}).json()
    assert [d["id"] for d in queued["items"]] == [ours]
    assert client.get("/api/emails", headers=ci, params={"status": "sent"}).json()["items"] == []
    everyone = client.get("/api/emails", headers=admin).json()["items"]
    assert {(d["id"], d["created_by"]) for d in everyone} == {(ours, "ci"), (theirs, "billing")}


def test_idempotency_keys_belong_to_the_key_that_used_them(
    client: TestClient, keys: ApiKeyStore
) -> None:
    ci, billing = (
        bearer(keys.create("ci", Role.PRODUCER)),
        bearer(keys.create("billing", Role.PRODUCER)),
    )
    once = {"Idempotency-Key": "run-42"}
    first = client.post("/api/emails", headers={**ci, **once}, json=MESSAGE).json()
    again = client.post("/api/emails", headers={**ci, **once}, json=MESSAGE).json()
    other = client.post("/api/emails", headers={**billing, **once}, json=MESSAGE).json()
    assert again["id"] == first["id"]
    assert again["created"] is False
    assert other["id"] != first["id"]
    assert other["created"] is True
    assert client.get(f"/api/emails/{other['id']}", headers=billing).status_code == 200


def test_a_producer_pages_through_its_deliveries_exactly_once(
    client: TestClient, keys: ApiKeyStore
) -> None:
    ci = bearer(keys.create("ci", Role.PRODUCER))
    admin = bearer(keys.create("ann", Role.ADMIN))
    sent = client.post("/api/emails/batch", headers=ci, json=[MESSAGE] * 23).json()
    client.post("/api/emails/batch", headers=admin, json=[MESSAGE] * 5)
    for who, expected in ((ci, {d["id"] for d in sent}), (admin, None)):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/emails", headers=who, params=params).json()
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == (23 if expected else 28)
        if expected:
            assert set(seen) == expected


@pytest.mark.parametrize("cursor", ["1e308_" + "f" * 32, "5_0", "x", "1_" + "0" * 80, "nan_ab"])
def test_a_forged_cursor_costs_one_page_or_is_refused(
    client: TestClient, keys: ApiKeyStore, cursor: str
) -> None:
    admin = bearer(keys.create("ann", Role.ADMIN))
    answer = client.get("/api/emails", headers=admin, params={"cursor": cursor})
    assert answer.status_code in (200, 422)
    if answer.status_code == 422:
        assert answer.json()["field"] == "cursor"


# --- per-key limits --------------------------------------------------------------------------


def test_over_its_limit_a_key_gets_429_with_retry_after_and_nothing_is_stored(
    client: TestClient, keys: ApiKeyStore, outbox_context: OutboxContext
) -> None:
    ci = bearer(keys.create("ci", Role.PRODUCER, KeyLimits.of(max_per_minute=3)))
    for _ in range(3):
        assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 202
    refused = client.post("/api/emails", headers=ci, json=MESSAGE)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one more place in 60 / 3 s
    assert "3 e-mails per minute" in refused.json()["detail"]
    batch = client.post("/api/emails/batch", headers=ci, json=[MESSAGE, MESSAGE])
    assert batch.status_code == 429
    assert len(outbox_context.deliveries.recent(limit=50)) == 3
    too_big = client.post("/api/emails/batch", headers=ci, json=[MESSAGE] * 4)
    assert too_big.status_code == 422
    assert too_big.json()["field"] == "messages"


def test_a_retry_with_the_same_idempotency_key_is_not_charged(
    client: TestClient, keys: ApiKeyStore
) -> None:
    """A producer that lost the answer sends again with the same key: it gets its delivery
    back, not a 429, and the retry uses up nothing."""
    ci = bearer(keys.create("ci", Role.PRODUCER, KeyLimits.of(max_per_minute=2)))
    once = {**ci, "Idempotency-Key": "run-42"}
    first = client.post("/api/emails", headers=once, json=MESSAGE)
    for _ in range(3):
        again = client.post("/api/emails", headers=once, json=MESSAGE)
        assert again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
    batch = [{**MESSAGE, "idempotency_key": "run-42"}, {**MESSAGE, "idempotency_key": "run-43"}]
    assert client.post("/api/emails/batch", headers=ci, json=batch).status_code == 200
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 429


def test_a_day_limit_holds_across_requests_and_other_keys_are_not_charged(
    client: TestClient, keys: ApiKeyStore
) -> None:
    ci = bearer(keys.create("ci", Role.PRODUCER, KeyLimits.of(max_per_day=5)))
    other = bearer(keys.create("billing", Role.PRODUCER))
    assert client.post("/api/emails/batch", headers=ci, json=[MESSAGE] * 5).status_code == 200
    refused = client.post("/api/emails", headers=ci, json=MESSAGE)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 3600  # a place frees up in 86400 / 5 s
    assert client.post("/api/emails", headers=other, json=MESSAGE).status_code == 202


def test_a_key_sends_only_to_its_allowed_domains(client: TestClient, keys: ApiKeyStore) -> None:
    ci = bearer(keys.create("ci", Role.PRODUCER, KeyLimits.of(allowed_domains=["Example.com"])))
    message = {**MESSAGE, "to": ["a@example.com", "b@evil.example"]}
    refused = client.post("/api/emails", headers=ci, json=message)
    assert refused.status_code == 422
    assert refused.json()["field"] == "to[1]"
    assert "evil.example" in refused.json()["detail"]
    [result] = client.post(
        "/api/emails/batch", headers=ci, json=[{**MESSAGE, "bcc": ["x@y.org"]}]
    ).json()
    assert result["field"] == "bcc[0]"
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 202


def test_admins_set_limits_over_the_api(client: TestClient, keys: ApiKeyStore) -> None:
    admin = bearer(keys.create("ann", Role.ADMIN))
    created = client.post(
        "/api/keys",
        headers=admin,
        json={"name": "ci", "role": "producer", "max_per_minute": 1},
    )
    assert created.status_code == 201
    ci = bearer(created.json()["key"])
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 202
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 429
    updated = client.patch(
        "/api/keys/ci",
        headers=admin,
        json={"max_per_minute": None, "allowed_domains": ["example.com"]},
    ).json()
    assert updated["max_per_minute"] is None
    assert updated["allowed_domains"] == ["example.com"]
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 202
    bad = client.patch("/api/keys/ci", headers=admin, json={"allowed_domains": ["not a domain"]})
    assert bad.status_code == 422
    assert bad.json()["field"] == "allowed_domains"
    listed = client.get("/api/keys", headers=admin).json()
    assert all("key" not in row and "hash" not in row for row in listed)
    assert client.delete("/api/keys/ci", headers=admin).status_code == 204
    assert client.post("/api/emails", headers=ci, json=MESSAGE).status_code == 401


# --- bounded input, on the wire ------------------------------------------------------------


def raw_request(host: str, port: int, head: str, body: bytes = b"") -> tuple[str, float]:
    """Send a request head (and maybe part of a body) and read the answer's status line."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(head.encode() + b"\r\n" + body)
        status_line = connection.recv(65536).split(b"\r\n", 1)[0].decode()
    return status_line, time.monotonic() - started


def test_a_huge_body_is_refused_before_it_is_sent(outbox_context: OutboxContext) -> None:
    key = ApiKeyStore(outbox_context.redis).create("ci", Role.PRODUCER)
    with served_api(outbox_context) as (host, port):
        for authorization in ("", f"Authorization: Bearer {key}\r\n"):
            head = (
                "POST /api/emails HTTP/1.1\r\nHost: outbox\r\nContent-Type: application/json\r\n"
                f"{authorization}Content-Length: {5 * 1024**3}\r\n"
            )
            status, seconds = raw_request(host, port, head)  # not one byte of the 5 GB sent
            assert status == "HTTP/1.1 413 Request Entity Too Large" or status.startswith(
                "HTTP/1.1 413"
            ), status
            assert seconds < 2


def test_a_chunked_body_is_read_only_up_to_the_limit(outbox_context: OutboxContext) -> None:
    key = ApiKeyStore(outbox_context.redis).create("ci", Role.PRODUCER)
    limit = outbox_context.settings.request_bytes_limit
    with served_api(outbox_context) as (host, port):
        chunk = b"x" * (1024 * 1024)

        def chunks() -> Iterator[bytes]:
            for _ in range(limit // len(chunk) + 8):
                yield chunk

        answer = httpx.post(
            f"http://{host}:{port}/api/emails",
            headers={**bearer(key), "Content-Type": "application/json"},
            content=chunks(),
            timeout=30,
        )
        assert answer.status_code == 413
        assert "OUTBOX_MAX_REQUEST_BYTES" in answer.json()["detail"]


def test_without_a_key_a_body_is_never_parsed(client: TestClient) -> None:
    """Nothing of the body matters to a caller without a key: not even whether it is JSON."""
    for body in (b"{not json", b"[" * 10_000, b'{"to": "x"}'):
        answer = client.post(
            "/api/emails", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_body_that_is_not_json_is_a_400(client: TestClient, keys: ApiKeyStore) -> None:
    ci = bearer(keys.create("ci", Role.PRODUCER))
    answer = client.post(
        "/api/emails", content=b"{not json", headers={**ci, "Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["detail"]


# --- the command line ------------------------------------------------------------------------


def test_keys_get_their_limits_from_the_command_line(
    outbox_env: dict[str, str], outbox_context: OutboxContext
) -> None:
    created = run_outbox(
        outbox_env,
        "keys",
        "create",
        "--name",
        "ci",
        "--role",
        "producer",
        "--max-per-minute",
        "2",
        "--allow-domain",
        "Example.com",
        "--allow-domain",
        "example.org",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    assert shown["max_per_minute"] == 2
    assert shown["allowed_domains"] == ["example.com", "example.org"]
    updated = run_outbox(
        outbox_env, "keys", "update", "ci", "--max-per-day", "100", "--any-domain", "--json"
    )
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout) | {"created_at": 0, "last_used_at": None} == {
        "name": "ci",
        "role": "producer",
        "created_at": 0,
        "last_used_at": None,
        "max_per_minute": 2,
        "max_per_day": 100,
        "allowed_domains": [],
    }
    listed = run_outbox(outbox_env, "keys", "list")
    assert "2/min" in listed.stdout
    assert "100/day" in listed.stdout
    missing = run_outbox(outbox_env, "keys", "update", "nobody", "--max-per-day", "1")
    assert missing.returncode != 0
    assert "no API key named 'nobody'" in missing.stderr
    with TestClient(create_app(outbox_context)) as client:
        ci = bearer(shown["key"])
        statuses = [
            client.post("/api/emails", headers=ci, json=MESSAGE).status_code for _ in range(3)
        ]
    assert statuses == [202, 202, 429]


def test_the_largest_message_fits_in_a_body_whatever_its_json_encoder(
    outbox_context: OutboxContext, keys: ApiKeyStore
) -> None:
    """Python's json (and so httpx's and requests' json=) spells é as the six bytes \\u00e9:
    a message just under OUTBOX_MAX_MESSAGE_BYTES in UTF-8 is three times that in JSON."""
    settings = outbox_context.settings.model_copy(update={"max_message_bytes": 4 * 1024 * 1024})
    context = OutboxContext(settings, outbox_context.redis_location)
    ci = bearer(keys.create("ci", Role.PRODUCER))
    text = "é" * (2 * 1024 * 1024 - 100)  # 4 MiB in UTF-8, less the subject's share
    with TestClient(create_app(context)) as client:
        answer = client.post("/api/emails", headers=ci, json={**MESSAGE, "text": text})
        assert answer.status_code == 202, answer.text[:200]
        over = client.post("/api/emails", headers=ci, json={**MESSAGE, "text": text + "é" * 100})
        assert over.status_code == 422  # over the message limit: refused by field, not by size
        assert over.json()["field"] == "text"


def test_paging_through_ids_of_one_score_reads_one_page_at_a_time(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    """The sweeper stamps thousands of queued ids with one time: a page whose cursor lands
    among them goes on from the cursor's rank instead of reading them all again."""
    admin = bearer(keys.create("ann", Role.ADMIN))
    client.post("/api/emails/batch", headers=admin, json=[MESSAGE] * 300)
    queued = "outbox:status:queued"
    ids = [as_text(raw) for raw in redis_client.zrange(queued, 0, -1)]
    redis_client.zadd(queued, dict.fromkeys(ids, 1_700_000_000.5))
    redis_client.config_resetstat()
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 40, "status": "queued"}
        page = client.get(
            "/api/emails", headers=admin, params={**params, "cursor": cursor} if cursor else params
        ).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 300
    stats = redis_client.info("commandstats")
    assert "cmdstat_zrangebyscore" not in stats  # never the whole group of ties
    # Pages 2 to 8 each go on from the cursor's rank; the last one also finds the end.
    assert stats["cmdstat_zrevrange"]["calls"] == 8
