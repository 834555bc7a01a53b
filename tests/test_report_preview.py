"""A report's dry run, over a real HTTP server and the real CLI: it shows per list the e-mail
that the real run then sends, word for word, and leaves Redis exactly as it found it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config.api_keys import ApiKeyStore, KeyLimits, Role
from peers.processes import run_outbox
from tasks.context import OutboxContext
from tests.support.served_api import served_api
from tests.test_reports import NOTIFICATION, run

# Every request's authentication stamps its key's last use here; nothing else may change.
LAST_USED = b"outbox:apikeys:last-used"


def snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key of the database with its serialized value: a write of any kind shows."""
    return {key: client.dump(key) for key in client.scan_iter() if key != LAST_USED}


def assert_previews_what_was_stored(
    outbox_context: OutboxContext, preview: dict[str, Any], posted: dict[str, Any]
) -> None:
    """Each matched list's preview is its real e-mail's subject, bodies and recipients."""
    assert [entry["matched"] for entry in preview["lists"]] == [
        entry["matched"] for entry in posted["lists"]
    ]
    for previewed, sent in zip(preview["lists"], posted["lists"], strict=True):
        if not sent["matched"]:
            assert previewed["preview"] is None
            continue
        message = outbox_context.deliveries.get(sent["delivery_id"]).message
        assert previewed["preview"] == {
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "to": list(message.to),
        }


@pytest.fixture
def api(outbox_context: OutboxContext) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A real uvicorn serving the API, the schedule's lists saved by an admin, and a producer
    key that may send exactly the three e-mails of one run a minute."""
    keys = ApiKeyStore(outbox_context.redis)
    admin = {"Authorization": f"Bearer {keys.create('ann', Role.ADMIN)}"}
    producer = {
        "Authorization": "Bearer "
        + keys.create("scheduler", Role.PRODUCER, KeyLimits.of(max_per_minute=3))
    }
    with (
        served_api(outbox_context) as (host, port),
        httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as client,
    ):
        saved = client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
        assert saved.status_code == 200, saved.text
        yield client, producer


def test_a_dry_run_over_http_shows_what_the_real_run_then_sends_and_stores_nothing(
    outbox_context: OutboxContext,
    redis_client: redis.Redis,
    api: tuple[httpx.Client, dict[str, str]],
) -> None:
    client, producer = api
    before = snapshot(redis_client)
    dry = client.post("/api/schedules/nightly/runs?dry_run=true", headers=producer, json=run())
    assert dry.status_code == 200, dry.text  # nothing was accepted
    preview = dry.json()
    assert (preview["dry_run"], preview["repeated"], preview["previous_status"]) == (
        True,
        False,
        None,
    )
    assert [(r["rule"], r["matched"], r["delivery_id"]) for r in preview["lists"]] == [
        ("always", True, None),
        ("on_failure", True, None),
        ("on_change", True, None),
    ]
    always = preview["lists"][0]["preview"]
    assert always["subject"] == "[FAILED] Nightly regression — 47 passed, 3 failed"
    assert always["to"] == ["qa@example.com", "lead@example.com"]
    assert "Element 'Pay' not found" in always["text"]
    assert "&lt;script&gt;" in always["html"]
    assert "<script>" not in always["html"]
    # No delivery, no idempotency key, no run recorded, no last status, no quota counted.
    assert snapshot(redis_client) == before

    # The real run after it: nothing of the dry run is in its way. The key's three e-mails a
    # minute are all still there, "on_change" still sees a first run, and the idempotency
    # keys are new, so three fresh deliveries.
    real = client.post("/api/schedules/nightly/runs", headers=producer, json=run())
    assert real.status_code == 202, real.text
    posted = real.json()
    assert posted["repeated"] is False
    assert "dry_run" not in posted
    assert all(entry["delivery_id"] for entry in posted["lists"])
    assert len(outbox_context.deliveries.recent(limit=50)) == 3
    assert_previews_what_was_stored(outbox_context, preview, posted)

    # The same run again, dry: posting it would send nothing, so there is nothing to preview.
    again = client.post("/api/schedules/nightly/runs?dry_run=true", headers=producer, json=run())
    assert again.status_code == 200, again.text
    repeated = again.json()
    assert (repeated["dry_run"], repeated["repeated"]) == (True, True)
    assert [r["delivery_id"] for r in repeated["lists"]] == [
        r["delivery_id"] for r in posted["lists"]
    ]
    assert [r["preview"] for r in repeated["lists"]] == [None, None, None]

    # A next run compares with the real run's status, not with anything the dry runs saw.
    after = snapshot(redis_client)
    following = client.post(
        "/api/schedules/nightly/runs?dry_run=true", headers=producer, json=run("r-1043")
    ).json()
    assert following["previous_status"] == "failed"
    assert [r["matched"] for r in following["lists"]] == [True, True, False]
    assert following["lists"][2]["preview"] is None  # on_change: failed again
    assert snapshot(redis_client) == after


def test_a_dry_run_is_refused_as_the_real_run_is_and_stores_nothing(
    redis_client: redis.Redis, api: tuple[httpx.Client, dict[str, str]]
) -> None:
    client, producer = api
    before = snapshot(redis_client)
    for body, field in [
        (run(colour="red"), "colour"),
        (run(status="green"), "status"),
        (run(link="javascript:alert(1)"), "link"),
        (run(schedule_id="weekly"), "schedule_id"),
        (run(finished_at="2026-11-24T00:00:00Z"), "finished_at"),
        (run(started_at="2026-11-24T01:00:00"), "started_at"),
    ]:
        for path in ("/api/schedules/nightly/runs?dry_run=true", "/api/schedules/nightly/runs"):
            answer = client.post(path, headers=producer, json=body)
            assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text
    unknown = client.post(
        "/api/schedules/other/runs?dry_run=true", headers=producer, json=run(schedule_id="other")
    )
    assert unknown.status_code == 404, unknown.text
    assert "no notification settings" in unknown.json()["detail"]
    anonymous = client.post("/api/schedules/nightly/runs?dry_run=true", json=run())
    assert anonymous.status_code == 401
    not_a_flag = client.post(
        "/api/schedules/nightly/runs?dry_run=maybe", headers=producer, json=run()
    )
    assert (not_a_flag.status_code, not_a_flag.json()["field"]) == (422, "dry_run")
    assert snapshot(redis_client) == before


def test_the_openapi_description_documents_the_dry_run(
    api: tuple[httpx.Client, dict[str, str]],
) -> None:
    client, _ = api
    route = client.get("/openapi.json").json()["paths"]["/api/schedules/{schedule_id}/runs"]
    post = route["post"]
    assert "dry_run=true" in post["description"]
    assert [p["name"] for p in post["parameters"] if p["in"] == "query"] == ["dry_run"]
    assert {"200", "202", "404", "422"} <= set(post["responses"])
    assert "nothing was accepted" in post["responses"]["200"]["description"]


def test_the_cli_dry_run_shows_the_e_mails_and_the_real_run_sends_them(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    saved = run_outbox(
        outbox_env,
        "schedules", "set", "nightly", "--name", "Nightly regression",
        "--notify", "always=qa@example.com,lead@example.com",
        "--notify", "on_failure=dev@example.com",
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(run(status="passed")))
    before = snapshot(redis_client)

    shown = run_outbox(outbox_env, "report", "--file", str(run_file), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("dry run: nothing was sent or recorded for run r-1042")
    assert "always     qa@example.com, lead@example.com: would be sent" in shown.stdout
    assert "Subject: [PASSED] Nightly regression — 47 passed, 3 failed" in shown.stdout
    assert "on_failure dev@example.com: rule did not match: would not be sent" in shown.stdout
    assert "Flow 0" in shown.stdout  # the plain-text body, as the recipients would read it

    as_json = run_outbox(outbox_env, "report", "--file", str(run_file), "--dry-run", "--json")
    assert as_json.returncode == 0, as_json.stderr
    preview = json.loads(as_json.stdout)
    assert preview["dry_run"] is True
    assert [r["matched"] for r in preview["lists"]] == [True, False]
    assert snapshot(redis_client) == before

    posted = run_outbox(outbox_env, "report", "--file", str(run_file), "--json")
    assert posted.returncode == 0, posted.stderr
    assert_previews_what_was_stored(outbox_context, preview, json.loads(posted.stdout))

    again = run_outbox(outbox_env, "report", "--file", str(run_file), "--dry-run")
    assert again.stdout.startswith(
        "dry run: run r-1042 was reported before; it would send nothing again"
    )
    assert "always     qa@example.com, lead@example.com: sent before as e-mail " in again.stdout

    missing = tmp_path / "other.json"
    missing.write_text(json.dumps(run(schedule_id="other")))
    unknown = run_outbox(outbox_env, "report", "--file", str(missing), "--dry-run")
    assert (unknown.returncode, "no notification settings" in unknown.stderr) == (1, True)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps(run(status="green")))
    refused = run_outbox(outbox_env, "report", "--file", str(invalid), "--dry-run")
    assert (refused.returncode, "status" in refused.stderr) == (2, True)

    # An e-mail over the size limit is refused by the dry run as by the real run, unstored.
    after = snapshot(redis_client)
    small = {**outbox_env, "OUTBOX_MAX_MESSAGE_BYTES": "20000"}
    next_run = tmp_path / "next.json"
    next_run.write_text(json.dumps(run("r-1043")))
    too_large = [
        run_outbox(small, "report", "--file", str(next_run), *dry) for dry in (["--dry-run"], [])
    ]
    assert [r.returncode for r in too_large] == [2, 2], too_large[0].stderr
    assert too_large[0].stderr == too_large[1].stderr
    assert "OUTBOX_MAX_MESSAGE_BYTES" in too_large[0].stderr
    assert snapshot(redis_client) == after
