"""The page's parts for scheduled send, cancel and staging, in a real browser against the real
``outbox api`` and ``outbox worker``: scheduled and cancelled deliveries with the Cancel
button, the Delivery mode fields of Mail Settings, the staging banner on every screen, and a
captured e-mail read safely (its text as text, its HTML in a sandboxed frame that runs no
script and loads nothing from elsewhere)."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect

from peers.processes import Service
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.browser.conftest import screenshot, sign_in

FROM = "robot@example.com"
SLOW = 30_000  # ms: a worker's round trip
REDIRECT_TO = ("qa@example.com", "dev@example.com")
CAPTURE_BANNER = "Staging mode: capture — nothing is sent"
REDIRECT_BANNER = f"Staging mode: redirect — every e-mail goes to {', '.join(REDIRECT_TO)}"
# The sandboxed frame of a captured e-mail's HTML refuses its scripts and remote loads, and
# Chromium says so on the console; any other console error still fails the test.
CSV = base64.b64encode(b"flow,outcome\n" + b"Checkout,failed\n" * 128).decode()
MESSAGE_FRAME = re.compile(r"/api/emails/[^/]+/message/html")


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """As conftest's ``page``, except for what the captured message's frame refuses."""
    tab = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type != "error" or message.text.startswith("Failed to load resource"):
            return
        where = message.location.get("url", "") if message.location else ""
        if not MESSAGE_FRAME.search(where):
            problems.append(f"{message.text} ({where})")

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    yield tab
    assert not problems, "the page reported:\n" + "\n".join(problems)


@pytest.fixture
def api(site: str, admin_key: str) -> Iterator[httpx.Client]:
    """outbox's HTTP API with the admin key, as a producer or an operator's script calls it."""
    with httpx.Client(
        base_url=site, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    ) as client:
        yield client


def save_settings(api: httpx.Client, **fields: Any) -> None:
    """Save SMTP settings over the API, as an operator's script would."""
    body = {"protocol": "smtp", "from_mailbox": FROM, "tls": "none", **fields}
    answer = api.put("/api/settings/mail", json=body)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def back_to_deliver(api: httpx.Client) -> Iterator[None]:
    """Each test starts and ends in the deliver mode. Saved as a new version, not by deleting
    the settings: a worker keeps the settings of a version it has seen."""
    save_settings(api, delivery_mode="deliver")
    yield
    save_settings(api, delivery_mode="deliver")


def send(api: httpx.Client, **message: Any) -> str:
    answer = api.post("/api/emails", json={"to": ["team@example.com"], **message})
    assert answer.status_code == 202, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def a_day_ahead() -> datetime:
    return (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


def test_scheduled_deliveries_show_their_time_and_can_be_cancelled(
    page: Page, site: str, admin_key: str, api: httpx.Client
) -> None:
    when = a_day_ahead()
    weekly = send(api, subject="Weekly summary", text="42 passed", send_at=when.isoformat())
    monthly = send(api, subject="Monthly digest", text="All green", send_at=when.isoformat())
    withdrawn = send(api, subject="Withdrawn elsewhere", text="x", send_at=when.isoformat())
    for delivery_id in (weekly, monthly, withdrawn):
        assert api.get(f"/api/emails/{delivery_id}").json()["status"] == "scheduled"

    sign_in(page, site, admin_key, "/deliveries")
    row = page.get_by_role("row").filter(has_text="Weekly summary")
    expect(row.get_by_text("scheduled", exact=True)).to_be_visible()
    expect(row).to_contain_text(re.compile(r"scheduled for \S"))
    # The time shown is the send_at of the record, in the reader's local time.
    scheduled_time = row.locator(".scheduled time")
    expect(scheduled_time).to_have_attribute(
        "datetime", when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    expect(row.get_by_role("button", name="Cancel")).to_be_visible()
    expect(row.get_by_role("button", name="Retry")).to_have_count(0)

    page.get_by_label("Status").select_option(label="Scheduled")
    expect(
        page.get_by_role("row").filter(has_text=re.compile("Weekly|Monthly|Withdrawn"))
    ).to_have_count(3)
    page.get_by_label("Status").select_option(label="All")

    # Cancel from the page: the row says cancelled, and Cancel goes.
    digest = page.get_by_role("row").filter(has_text="Monthly digest")
    digest.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("status")).to_have_text(
        "“Monthly digest” is cancelled: it will not be sent."
    )
    expect(digest.get_by_text("cancelled", exact=True)).to_be_visible()
    expect(digest.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(digest.get_by_role("button", name="Monthly digest")).to_be_focused()
    record = api.get(f"/api/emails/{monthly}").json()
    assert record["status"] == "cancelled"
    assert [r["status"] for r in record["recipients"]] == ["cancelled"]

    # Cancelled meanwhile by someone else: the 409's reason is shown, and the row refreshed.
    assert api.delete(f"/api/emails/{withdrawn}").status_code == 200
    other = page.get_by_role("row").filter(has_text="Withdrawn elsewhere")
    other.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"Cancel failed: delivery {withdrawn} was not cancelled"
    )
    expect(page.get_by_role("status")).to_have_class(re.compile(r"\bfail\b"))
    expect(other.get_by_text("cancelled", exact=True)).to_be_visible()

    page.get_by_label("Status").select_option(label="Cancelled")
    expect(page.get_by_role("row").filter(has_text=re.compile("Monthly|Withdrawn"))).to_have_count(
        2
    )
    expect(page.get_by_role("row").filter(has_text="Weekly summary")).to_have_count(0)
    page.get_by_label("Status").select_option(label="All")

    digest.get_by_role("button", name="Monthly digest").click()
    detail = page.get_by_role("region", name="Monthly digest")
    expect(detail.get_by_role("row").filter(has_text="team@example.com")).to_contain_text(
        "cancelled"
    )
    row.get_by_role("button", name="Weekly summary").click()
    detail = page.get_by_role("region", name="Weekly summary")
    expect(detail.get_by_text("Scheduled for", exact=True)).to_be_visible()
    expect(detail.get_by_role("row").filter(has_text="team@example.com")).to_contain_text("pending")
    expect(detail.get_by_text("Not tried yet.")).to_be_visible()
    screenshot(page, "deliveries-scheduled", docs=True)
    assert api.get(f"/api/emails/{weekly}").json()["status"] == "scheduled"


def fill_smtp(page: Page, peer: SmtpPeer) -> None:
    page.get_by_label("Protocol").select_option(label="SMTP")
    page.get_by_label("From Mailbox").fill(FROM)
    page.get_by_label("SMTP Server", exact=True).fill(peer.host)
    page.get_by_label("SMTP Port").fill(str(peer.port))
    page.get_by_label("TLS mode").select_option(label="None (no encryption)")


@pytest.mark.usefixtures("back_to_deliver")
def test_delivery_mode_fields_and_the_staging_banner(
    page: Page, site: str, admin_key: str, api: httpx.Client, worker_process: Service
) -> None:
    with smtp_peer() as plain:
        redirect_through_the_page(page, site, admin_key, api, plain)
    capture_and_back_to_deliver(page, api)


def redirect_through_the_page(
    page: Page, site: str, admin_key: str, api: httpx.Client, plain: SmtpPeer
) -> None:
    sign_in(page, site, admin_key)
    expect(page.get_by_role("button", name="Save")).to_be_enabled()
    banner = page.get_by_role("complementary", name="Staging mode")
    mode = page.get_by_label("Delivery mode")
    redirect_to = page.get_by_label("Redirect to")
    expect(mode).to_have_value("deliver")
    expect(redirect_to).to_be_hidden()
    expect(banner).to_be_hidden()

    fill_smtp(page, plain)
    mode.select_option(label="Redirect (staging: everything goes to…)")
    expect(redirect_to).to_be_visible()
    expect(redirect_to).to_have_accessible_description(re.compile(r"^Comma-separated"))
    # Redirect needs somewhere to go: the field says so, as other field errors do.
    page.get_by_role("button", name="Save").click()
    expect(redirect_to).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-redirect_to")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Not saved: check the marked field.")
    expect(banner).to_be_hidden()

    # A wrong address is named at the field.
    redirect_to.fill("qa@example.com, not an address")
    page.get_by_role("button", name="Save").click()
    expect(redirect_to).to_have_attribute("aria-invalid", "true")
    expect(redirect_to).to_have_accessible_description(
        re.compile(r"not an address: must be an e-mail address")
    )

    redirect_to.fill(" qa@example.com,dev@example.com ")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    expect(redirect_to).not_to_have_attribute("aria-invalid", "true")
    expect(banner).to_be_visible()
    expect(banner).to_have_text(REDIRECT_BANNER)
    saved = api.get("/api/settings/mail").json()
    assert (saved["delivery_mode"], saved["redirect_to"]) == ("redirect", list(REDIRECT_TO))
    screenshot(page, "staging-banner", docs=True)

    page.reload()
    expect(mode).to_have_value("redirect")
    expect(redirect_to).to_have_value(", ".join(REDIRECT_TO))
    expect(banner).to_have_text(REDIRECT_BANNER)

    # Every screen shows it, with the way back to the setting; an e-mail sent meanwhile went
    # to the redirect addresses only, and its row says so.
    send(api, subject="Release notes", text="v2.1 is out")
    page.get_by_role("link", name="Deliveries").click()
    expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
    expect(banner).to_contain_text(REDIRECT_BANNER)
    row = page.get_by_role("row").filter(has_text="Release notes")
    expect(row.get_by_text("sent", exact=True)).to_be_visible(timeout=SLOW)
    expect(row).to_contain_text(f"redirected to {', '.join(REDIRECT_TO)}")
    [arrived] = plain.wait_for_messages(1)
    assert sorted(arrived.rcpt_tos) == sorted(REDIRECT_TO)
    row.get_by_role("button", name="Release notes").click()
    detail = page.get_by_role("region", name="Release notes")
    expect(detail.get_by_text("Redirected to", exact=True)).to_be_visible()
    banner.get_by_role("link", name="Change in Mail Settings").click()
    expect(page.get_by_role("heading", name="Mail Settings")).to_be_visible()


def capture_and_back_to_deliver(page: Page, api: httpx.Client) -> None:
    """The OAuth protocol has the same fields; Deliver takes the banner away."""
    banner = page.get_by_role("complementary", name="Staging mode")
    mode = page.get_by_label("Delivery mode")
    redirect_to = page.get_by_label("Redirect to")
    expect(page.get_by_role("button", name="Save")).to_be_enabled()
    page.get_by_label("Protocol").select_option(label="OAuth")
    expect(mode).to_have_value("redirect")  # the installation's mode, not a protocol's
    graph = page.get_by_role("group", name="OAuth", exact=True)
    graph.get_by_label("Tenant").fill("contoso.onmicrosoft.com")
    graph.get_by_label("Client ID").fill("00000000-0000-4000-8000-000000000001")
    graph.get_by_label("Client Secret").fill("browser-Client-S3cret")
    mode.select_option(label="Capture (staging: nothing is sent)")
    expect(redirect_to).to_be_hidden()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    expect(banner).to_have_text(CAPTURE_BANNER)
    saved = api.get("/api/settings/mail").json()
    assert (saved["protocol"], saved["delivery_mode"]) == ("oauth", "capture")

    mode.select_option(label="Deliver")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    expect(banner).to_be_hidden()
    page.get_by_role("link", name="Deliveries").click()
    expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
    expect(banner).to_be_hidden()


@pytest.fixture
def remote() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server standing for a remote one that an e-mail's HTML points at: its
    address, and the paths anything asked it for."""
    hits: list[str] = []

    class Counting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("back_to_deliver")
def test_a_captured_email_is_shown_safely(
    page: Page,
    site: str,
    admin_key: str,
    api: httpx.Client,
    worker_process: Service,
    remote: tuple[str, list[str]],
) -> None:
    remote_url, remote_hits = remote
    text = "Nightly run: 41 passed, 1 failed.\n<b>Checkout</b> failed: Element 'Pay' not found"
    html = f"""<!doctype html><html><head><title>Nightly run</title>
<link rel="stylesheet" href="{remote_url}/style.css"></head>
<body style="font-family: sans-serif">
<h1>Nightly run</h1>
<p>41 passed, <strong>1 failed</strong>: Checkout.</p>
<p id="proof">The script did not run.</p>
<img src="{remote_url}/pixel.png" alt="tracking pixel"
     onerror="document.getElementById('proof').textContent = 'onerror ran'">
<script>
  document.getElementById("proof").textContent = "The script ran!";
  window.parent.document.title = "pwned";
</script>
</body></html>"""
    with smtp_peer() as plain:
        save_settings(
            api, server=plain.host, port=plain.port, delivery_mode="capture", redirect_to=[]
        )
        report = {"name": "results.csv", "content_type": "text/csv", "content_base64": CSV}
        delivery_id = send(api, subject="Nightly run", text=text, html=html, attachments=[report])

        sign_in(page, site, admin_key, "/deliveries")
        banner = page.get_by_role("complementary", name="Staging mode")
        expect(banner).to_contain_text(CAPTURE_BANNER)
        row = page.get_by_role("row").filter(has_text="Nightly run")
        expect(row.get_by_text("captured", exact=True)).to_be_visible(timeout=SLOW)
        expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
        expect(row.get_by_role("button", name="Retry")).to_have_count(0)

        row.get_by_role("button", name="Nightly run").click()
        detail = page.get_by_role("region", name="Nightly run")
        expect(detail.get_by_role("heading", name="Captured message")).to_be_visible()
        expect(detail.get_by_role("row").filter(has_text="team@example.com")).to_contain_text(
            "captured"
        )
        # The text part as text: its "<b>" is shown, not made bold.
        text_part = detail.get_by_label("Text", exact=True)
        expect(text_part).to_have_text(text)
        expect(text_part.locator("b")).to_have_count(0)

        frame_element = detail.locator("iframe")
        expect(frame_element).to_have_attribute("sandbox", "")
        expect(frame_element).to_have_attribute("src", f"/api/emails/{delivery_id}/message/html")
        frame = page.frame_locator("#message-html")
        expect(frame.get_by_role("heading", name="Nightly run")).to_be_visible()
        expect(frame.get_by_text("1 failed")).to_be_visible()
        # Neither the script nor the image's onerror ran, and nothing was fetched from the
        # remote server.
        expect(frame.locator("#proof")).to_have_text("The script did not run.")
        assert page.title() == "Deliveries · outbox"
        assert remote_hits == []

        expect(detail.get_by_role("list", name="Attachments")).to_contain_text(
            "results.csv text/csv, 2 KB"
        )
        headers = detail.locator("summary", has_text="Headers")
        headers.click()
        expect(detail.locator("#message-headers")).to_contain_text("Nightly run")
        screenshot(page, "captured-message-headers")

        # The raw message, with the session's cookie.
        with page.expect_download() as downloading:
            detail.get_by_role("link", name="Download .eml").click()
        raw = downloading.value.path().read_bytes()
        assert downloading.value.suggested_filename == f"{delivery_id}.eml"
        assert b"Subject: Nightly run" in raw

        headers.click()  # closed again, for the screenshot
        # The frame within the window: a full-page screenshot draws no frame outside it.
        page.set_viewport_size({"width": 1280, "height": 1300})
        screenshot(page, "captured-message", docs=True)
        assert remote_hits == []
        assert plain.messages == []  # nothing left outbox
