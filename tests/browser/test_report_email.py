"""A run's report e-mail as its readers see it: sent by ``outbox report`` through a real
worker to aiosmtpd, its HTML part opened in the browser."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.sync_api import Page, expect

from peers.processes import Service, run_outbox
from peers.smtp_peer import SmtpPeer
from tests.browser.conftest import SMTP_PASSWORD, SMTP_USER, screenshot
from tests.support.smtp_delivery import body_text, parse

RUN = {
    "schedule_id": "nightly",
    "schedule_name": "Nightly regression",
    "run_id": "r-1042",
    "started_at": "2026-11-24T01:00:00Z",
    "finished_at": "2026-11-24T01:42:10Z",
    "status": "failed",
    "link": "https://ci.example.com/runs/1042",
    "items": [
        {"flow": "Login", "outcome": "passed", "duration_seconds": 12.5},
        {"flow": "Search", "outcome": "passed", "duration_seconds": 8.2},
        {
            "flow": "Checkout",
            "outcome": "failed",
            "duration_seconds": 40.1,
            "message": "Element 'Pay' not found",
            "link": "https://ci.example.com/runs/1042/7",
        },
        {"flow": "<script>document.title='pwned'</script>", "outcome": "error"},
        {"flow": "Wishlist", "outcome": "skipped"},
        {"flow": "Profile", "outcome": "passed", "duration_seconds": 5.0},
    ],
}


def test_the_report_email_reads_well_and_runs_nothing(
    page: Page, env: dict[str, str], worker_process: Service, peer: SmtpPeer, tmp_path: Path
) -> None:
    configured = run_outbox(
        env,
        *("settings", "set", "smtp", "--from-mailbox", "robot@example.com"),
        *("--server", peer.host, "--port", str(peer.port), "--tls", "starttls"),
        *("--username", SMTP_USER, "--password-stdin"),
        stdin=SMTP_PASSWORD + "\n",
    )
    assert configured.returncode == 0, configured.stderr
    assert run_outbox(
        env, "schedules", "set", "nightly", "--name", "Nightly regression",
        "--notify", "always=qa@example.com",
    ).returncode == 0  # fmt: skip
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(RUN))
    before = len(peer.messages)
    reported = run_outbox(env, "report", "--file", str(run_file))
    assert reported.returncode == 0, reported.stderr

    [received] = peer.wait_for_messages(before + 1, timeout=30)[before:]
    mime = parse(received.data)
    assert mime["Subject"] == "[FAILED] Nightly regression — 3 passed, 1 failed, 1 skipped, 1 error"
    page.set_content(body_text(mime, "html"))

    rows = page.locator("tr.item")
    expect(rows).to_have_count(6)
    outcomes = [rows.nth(n).locator("td").first.inner_text() for n in range(6)]
    assert outcomes == ["failed", "error", "skipped", "passed", "passed", "passed"]
    expect(rows.nth(1)).to_contain_text("<script>document.title='pwned'</script>")
    assert page.title() == "Nightly regression: FAILED"  # the flow's script never ran
    expect(page.get_by_role("link", name="Checkout")).to_have_attribute(
        "href", "https://ci.example.com/runs/1042/7"
    )
    screenshot(page, "report-email", docs=True)
