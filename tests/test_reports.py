"""Schedule result e-mails: a run posted over HTTP arrives at a real aiosmtpd server as people
read it; rules decide who hears of each run; a run is e-mailed once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from config.api_keys import ApiKeyStore, KeyLimits, Role
from config.errors import ReportTemplateError
from peers.processes import run_outbox
from peers.smtp_peer import SmtpPeer
from tasks.context import OutboxContext
from tasks.producer import Producer
from tasks.reports.model import RunReport
from tasks.reports.render import ReportRenderer
from tasks.reports.rules import Notification
from tasks.reports.service import ReportService
from tests.support.in_process_worker import InProcessWorker
from tests.support.smtp_delivery import body_text, configure, parse
from worker.records import Priority

RESULTS_XML = b"<testsuite tests='50' failures='3'/>"


def run(run_id: str = "r-1042", status: str = "failed", **changes: Any) -> dict[str, Any]:
    """A nightly run: 47 flows passed, 3 failed (one of them named like an attack)."""
    items: list[dict[str, Any]] = [
        {"flow": f"Flow {n}", "outcome": "passed", "duration_seconds": 10.0 + n} for n in range(47)
    ]
    items[20:20] = [
        {
            "flow": "Checkout",
            "outcome": "failed",
            "duration_seconds": 40.1,
            "message": "Element 'Pay' not found",
            "link": "https://ci.example.com/runs/1042/7",
        },
        {"flow": "<script>alert('x')</script>", "outcome": "failed", "duration_seconds": 3.2},
        {"flow": "Refund", "outcome": "failed", "message": "Timed out after 60 s"},
    ]
    return {
        "schedule_id": "nightly",
        "schedule_name": "Nightly regression",
        "run_id": run_id,
        "started_at": "2026-11-24T01:00:00Z",
        "finished_at": "2026-11-24T01:42:10Z",
        "status": status,
        "link": "https://ci.example.com/runs/1042",
        "items": items,
        "attachments": [
            {
                "name": "results.xml",
                "content_type": "application/xml",
                "content_base64": base64.b64encode(RESULTS_XML).decode(),
            }
        ],
        **changes,
    }


NOTIFICATION = {
    "name": "Nightly regression",
    "lists": [
        {"rule": "always", "to": ["qa@example.com", "lead@example.com"]},
        {"rule": "on_failure", "to": ["dev@example.com"]},
        {"rule": "on_change", "to": ["boss@example.com"]},
    ],
}


@pytest.fixture
def api(
    outbox_context: OutboxContext,
) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    keys = ApiKeyStore(outbox_context.redis)
    admin = {"Authorization": f"Bearer {keys.create('ann', Role.ADMIN)}"}
    producer = {"Authorization": f"Bearer {keys.create('scheduler', Role.PRODUCER)}"}
    with TestClient(create_app(outbox_context)) as client:
        yield client, admin, producer


def delivered(
    outbox_context: OutboxContext, worker: InProcessWorker, peer: SmtpPeer, delivery_id: str
) -> EmailMessage:
    assert worker.deliver(delivery_id) == ["sent"]
    message_id = outbox_context.deliveries.get(delivery_id).message.message_id
    [received] = [m for m in peer.messages if parse(m.data)["Message-ID"] == message_id]
    return parse(received.data)


def test_a_run_posted_over_http_arrives_as_people_read_it(
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
    api: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, admin, producer = api
    configure(outbox_context, plain_peer)
    saved = client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
    assert saved.status_code == 200, saved.text
    assert (
        client.put(
            "/api/schedules/nightly/notification", headers=producer, json=NOTIFICATION
        ).status_code
        == 403
    )

    answer = client.post("/api/schedules/nightly/runs", headers=producer, json=run())
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert [(r["rule"], r["matched"]) for r in result["lists"]] == [
        ("always", True),
        ("on_failure", True),
        ("on_change", True),  # the schedule's first run counts as a change
    ]
    always = result["lists"][0]["delivery_id"]
    assert outbox_context.deliveries.get(always).priority is Priority.HIGH

    mime = delivered(outbox_context, worker, plain_peer, always)
    assert mime["Subject"] == "[FAILED] Nightly regression — 47 passed, 3 failed"
    assert mime["To"] == "qa@example.com, lead@example.com"
    text = body_text(mime, "plain")
    html = body_text(mime, "html")
    for body in (text, html):
        assert body.index("Checkout") < body.index("Flow 0")  # failed flows first
        assert "Element &#39;Pay&#39; not found" in body or "Element 'Pay' not found" in body
        assert "42 min 10 s" in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html  # inert
    assert "<script>" not in html
    assert '<a href="https://ci.example.com/runs/1042/7"' in html
    assert "<script>alert('x')</script>" in text  # plain text needs no escaping
    [attachment] = mime.iter_attachments()
    assert attachment.get_filename() == "results.xml"
    assert attachment.get_payload(decode=True) == RESULTS_XML


def test_unknown_fields_and_unsafe_links_are_refused_naming_the_field(
    api: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, admin, producer = api
    client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
    for body, field in [
        (run(colour="red"), "colour"),
        (run(status="green"), "status"),
        (run(link="javascript:alert(1)"), "link"),
        (run(items=[{"flow": "a", "outcome": "passed", "extra": 1}]), "items[0].extra"),
        (run(schedule_id="weekly"), "schedule_id"),
        (run(finished_at="2026-11-24T00:00:00Z"), "finished_at"),
    ]:
        answer = client.post("/api/schedules/nightly/runs", headers=producer, json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
    bad_list = {"name": "n", "lists": [{"rule": "sometimes", "to": ["a@example.com"]}]}
    refused = client.put("/api/schedules/nightly/notification", headers=admin, json=bad_list)
    assert (refused.status_code, refused.json()["field"]) == (422, "lists[0].rule")
    unknown = client.post(
        "/api/schedules/other/runs", headers=producer, json=run(schedule_id="other")
    )
    assert unknown.status_code == 404


@pytest.fixture
def reports(outbox_context: OutboxContext, producer: Producer) -> ReportService:
    outbox_context.schedules.save("nightly", Notification.model_validate(NOTIFICATION))
    return ReportService(outbox_context.schedules, producer, ReportRenderer())


def test_each_rule_sends_exactly_when_it_should_across_runs(reports: ReportService) -> None:
    sequence = ["passed", "passed", "failed", "failed", "partially_passed", "passed"]
    sent = []
    for number, status in enumerate(sequence):
        result = reports.post(RunReport.model_validate(run(f"r-{number}", status, items=[])))
        sent.append(tuple(r.matched for r in result.lists))
    # (always, on_failure, on_change)
    assert sent == [
        (True, False, True),  # first run: a change
        (True, False, False),
        (True, True, True),
        (True, True, False),
        (True, True, True),  # failed -> partially passed is a change, and not a pass
        (True, False, True),
    ]


def test_the_same_run_posted_twice_is_emailed_once(
    outbox_context: OutboxContext,
    reports: ReportService,
    worker: InProcessWorker,
    plain_peer: SmtpPeer,
) -> None:
    configure(outbox_context, plain_peer)
    first = reports.post(RunReport.model_validate(run()))
    again = reports.post(RunReport.model_validate(run()))
    assert again.repeated
    assert [r.delivery_id for r in again.lists] == [r.delivery_id for r in first.lists]
    ids = [r.delivery_id for r in first.lists if r.delivery_id]
    assert worker.deliver(*ids) == ["sent"] * 3
    assert len(plain_peer.messages) == 3
    # The second post moved nothing: the next run still compares with the first's status.
    after = reports.post(RunReport.model_validate(run("r-next", "failed")))
    assert after.previous_status == "failed"
    assert not after.lists[2].matched  # on_change: failed again


def test_an_operator_template_replaces_outbox_own(
    outbox_context: OutboxContext, producer: Producer, tmp_path: Path
) -> None:
    (tmp_path / "subject.txt").write_text(
        "{{ report.schedule_name }} finished: {{ report.status.value }}"
    )
    outbox_context.schedules.save("nightly", Notification.model_validate(NOTIFICATION))
    service = ReportService(outbox_context.schedules, producer, ReportRenderer(tmp_path))
    result = service.post(RunReport.model_validate(run()))
    record = outbox_context.deliveries.get(result.lists[0].delivery_id or "")
    assert record.message.subject == "Nightly regression finished: failed"
    assert "Checkout" in (record.message.html or "")  # outbox's own HTML template


def test_the_cli_manages_schedules_and_reports_a_run(
    outbox_env: dict[str, str], tmp_path: Path
) -> None:
    saved = run_outbox(
        outbox_env,
        "schedules", "set", "nightly", "--name", "Nightly regression",
        "--notify", "always=qa@example.com,lead@example.com",
        "--notify", "on_failure=dev@example.com",
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    shown = json.loads(run_outbox(outbox_env, "schedules", "show", "nightly", "--json").stdout)
    assert shown["lists"][0] == {"rule": "always", "to": ["qa@example.com", "lead@example.com"]}
    assert "nightly" in run_outbox(outbox_env, "schedules", "list").stdout

    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(run(status="passed")))
    reported = run_outbox(outbox_env, "report", "--file", str(run_file), "--json")
    assert reported.returncode == 0, reported.stderr
    assert [r["matched"] for r in json.loads(reported.stdout)["lists"]] == [True, False]
    again = run_outbox(outbox_env, "report", "--file", str(run_file))
    assert again.stdout.startswith("run r-1042 was reported before; nothing sent again")

    assert run_outbox(outbox_env, "schedules", "delete", "nightly").returncode == 0
    missing = run_outbox(outbox_env, "schedules", "show", "nightly")
    assert (missing.returncode, "no notification settings" in missing.stderr) == (1, True)


def test_times_without_a_time_zone_and_bad_schedule_ids_are_refused(
    api: tuple[TestClient, dict[str, str], dict[str, str]], outbox_env: dict[str, str]
) -> None:
    client, admin, producer = api
    client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
    local_time = client.post(
        "/api/schedules/nightly/runs", headers=producer, json=run(started_at="2026-11-24T01:00:00")
    )
    assert (local_time.status_code, local_time.json()["field"]) == (422, "started_at")
    refused = run_outbox(
        outbox_env, "schedules", "set", "a:last", "--name", "n", "--notify", "always=a@example.com"
    )
    assert refused.returncode == 2
    assert "schedule_id" in refused.stderr


def test_a_broken_operator_template_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("<p>{{ report.schedule_name </p>")
    with pytest.raises(ReportTemplateError, match=r"report.html, line 1"):
        ReportRenderer(tmp_path)
    (tmp_path / "report.html").write_text("<p>{{ report.no_such_field }}</p>")
    with pytest.raises(ReportTemplateError, match="no_such_field"):
        ReportRenderer(tmp_path).render(RunReport.model_validate(run()))


def test_a_producers_limit_counts_the_e_mails_its_runs_send(
    outbox_context: OutboxContext, api: tuple[TestClient, dict[str, str], dict[str, str]]
) -> None:
    client, admin, _ = api
    keys = ApiKeyStore(outbox_context.redis)
    limited = {
        "Authorization": "Bearer "
        + keys.create("ci", Role.PRODUCER, KeyLimits.of(max_per_minute=4))
    }
    client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
    first = client.post("/api/schedules/nightly/runs", headers=limited, json=run("r-1"))
    assert first.status_code == 202  # three lists matched: three of its four
    again = client.post("/api/schedules/nightly/runs", headers=limited, json=run("r-1"))
    assert again.json()["repeated"] is True  # a run posted again sends and counts nothing
    refused = client.post("/api/schedules/nightly/runs", headers=limited, json=run("r-2"))
    assert refused.status_code == 429  # 'always' and 'on_failure' would make five
    assert int(refused.headers["Retry-After"]) >= 1
    stored = outbox_context.deliveries.page(created_by="ci").records
    assert len(stored) == 3
    retried = client.post("/api/schedules/nightly/runs", headers=limited, json=run("r-2"))
    assert retried.status_code == 429  # nothing was recorded of r-2: it can be posted later


def test_a_run_posted_again_by_another_key_after_a_crash_sends_nothing_twice(
    outbox_context: OutboxContext,
    redis_client: redis.Redis,
    api: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    """The e-mails of a run are the run's, whoever posts it: a second producer posting the
    same run, after the first died before recording it, gets the same deliveries back."""
    client, admin, scheduler = api
    other = {
        "Authorization": "Bearer " + ApiKeyStore(outbox_context.redis).create("ci", Role.PRODUCER)
    }
    client.put("/api/schedules/nightly/notification", headers=admin, json=NOTIFICATION)
    first = client.post("/api/schedules/nightly/runs", headers=scheduler, json=run("r-7")).json()
    # As if its poster died after queueing the e-mails, before recording the run:
    redis_client.delete("outbox:schedule:nightly:run:r-7", "outbox:schedule:nightly:last")
    second = client.post("/api/schedules/nightly/runs", headers=other, json=run("r-7")).json()
    ids = [entry["delivery_id"] for entry in first["lists"]]
    assert [entry["delivery_id"] for entry in second["lists"]] == ids
    assert len(outbox_context.deliveries.recent(limit=50)) == 3
