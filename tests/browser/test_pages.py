"""The Mail Settings and Deliveries pages in a real browser, against real processes: the
``outbox api`` and ``outbox worker`` commands, Redis, and aiosmtpd servers (with STARTTLS
and a login, or plain ones whose replies a test scripts)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Locator, Page, expect

from config.mail_settings import DEFAULT_INSTANCE, DEFAULT_SMTP_SCOPE
from config.settings_store import SETTINGS_KEY
from peers.processes import Service, run_outbox
from peers.redis_server import free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.browser.conftest import SMTP_PASSWORD, SMTP_USER, screenshot, sign_in
from worker.records.keys import PAUSE_KEY

FROM = "robot@example.com"
KEEP_SECRET = "saved; leave empty to keep"
SLOW = 30_000  # ms: a worker's round trip
LIMITS = ("Max messages per minute", "Max recipients per day", "Max recipients per message")
# Exchange Online's published limits ("Exchange Online limits"), as the page pre-fills them.
EXCHANGE_ONLINE = ("30", "10000", "500")


@pytest.fixture(scope="module")
def env(env: dict[str, str]) -> dict[str, str]:
    """A provider's quota reply pauses the account for the documented minute (the test
    environment's second would end the pause before a page could show it)."""
    return {**env, "OUTBOX_PROVIDER_PAUSE_SECONDS": "60"}


@pytest.fixture
def nothing_saved(env: dict[str, str]) -> None:
    """No mail settings yet: the page shows the defaults."""
    client = redis.Redis.from_url(env["OUTBOX_REDIS_URL"])
    client.delete(SETTINGS_KEY)
    client.close()


@pytest.fixture
def paused_account_cleared(env: dict[str, str]) -> Iterator[None]:
    """The pause a test provoked ends with it: the page shows a pause of any account."""
    yield
    client = redis.Redis.from_url(env["OUTBOX_REDIS_URL"])
    client.delete(PAUSE_KEY)
    client.close()


def save_smtp(
    env: dict[str, str], *args: str, password: str | None = None, from_mailbox: str = FROM
) -> None:
    """Save SMTP settings from the command line, as an operator would."""
    extra = ["--password-stdin"] if password is not None else []
    result = run_outbox(
        env,
        "settings",
        "set",
        "smtp",
        "--from-mailbox",
        from_mailbox,
        *args,
        *extra,
        stdin=None if password is None else password + "\n",
    )
    assert result.returncode == 0, result.stderr


def graph_group(page: Page) -> Locator:
    """The fields of the OAuth protocol (Microsoft Graph)."""
    return page.get_by_role("group", name="OAuth", exact=True)


def smtp_oauth2_group(page: Page) -> Locator:
    """SMTP's fields of the OAuth 2.0 authentication."""
    return page.get_by_role("group", name="OAuth 2.0", exact=True)


def expect_limits(page: Page, *values: str) -> None:
    limits = page.get_by_role("group", name="Sending limits")
    for label, value in zip(LIMITS, values, strict=True):
        expect(limits.get_by_label(label)).to_have_value(value)


def fill_smtp(page: Page, peer: SmtpPeer, password: str) -> None:
    page.get_by_label("Protocol").select_option(label="SMTP")
    page.get_by_label("From Mailbox").fill(FROM)
    page.get_by_label("SMTP Server").fill(peer.host)
    page.get_by_label("SMTP Port").fill(str(peer.port))
    page.get_by_label("TLS mode").select_option(label="STARTTLS")
    page.get_by_label("SMTP Username").fill(SMTP_USER)
    page.get_by_label("SMTP Password").fill(password)


def test_sign_in_takes_an_admin_key_only(
    page: Page, site: str, admin_key: str, producer_key: str
) -> None:
    page.goto(site + "/")
    expect(page).to_have_url(site + "/settings/mail")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "signin", docs=True)

    page.get_by_label("Admin key").fill("obx_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That key is not valid.")
    expect(page.get_by_label("Admin key")).to_be_visible()

    page.get_by_label("Admin key").fill(producer_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("only an admin key can sign in")
    screenshot(page, "signin-producer-key")

    page.get_by_label("Admin key").fill(admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Mail Settings")).to_be_visible()
    expect(page.get_by_text("Signed in as ann")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


@pytest.mark.usefixtures("nothing_saved")
def test_protocols_show_their_fields_with_defaults(admin_page: Page) -> None:
    page = admin_page
    expect(page.get_by_text("Not saved yet")).to_be_visible()
    expect(page.get_by_label("Protocol")).to_have_value("smtp")
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value("localhost")
    expect(page.get_by_label("SMTP Port")).to_have_value("587")
    expect(page.get_by_label("TLS mode")).to_have_value("auto")
    expect(page.get_by_label("Accept any certificate")).not_to_be_checked()
    expect(page.get_by_label("Authentication")).to_have_value("password")
    expect(page.get_by_label("SMTP Username")).to_be_visible()
    expect(page.get_by_label("Scope")).to_be_hidden()
    expect(page.get_by_label("API URL")).to_be_hidden()
    expect_limits(page, "", "", "")
    expect(page.get_by_label(LIMITS[0])).to_have_accessible_description(
        "Held for all workers together; empty: none"
    )
    page.get_by_label("From Mailbox").fill(FROM)
    screenshot(page, "mail-settings-smtp", docs=True)

    page.get_by_label("Protocol").select_option(label="OAuth")
    graph = graph_group(page)
    expect(graph.get_by_label("Instance")).to_have_value(DEFAULT_INSTANCE)
    expect(graph.get_by_label("API URL")).to_have_value("https://graph.microsoft.com/")
    for empty in ("Tenant", "Client ID", "Client Secret"):
        expect(graph.get_by_label(empty, exact=True)).to_have_value("")
    expect(page.get_by_label("From Mailbox")).to_have_value(FROM)
    expect(page.get_by_label("SMTP Server", exact=True)).to_be_hidden()
    expect(page.get_by_label("SMTP Port")).to_be_hidden()
    expect(page.get_by_label("Authentication")).to_be_hidden()
    # A new form: Graph's published limits (those of the Exchange Online mailbox).
    expect_limits(page, *EXCHANGE_ONLINE)
    expect(page.get_by_role("button", name="Test connection")).to_be_enabled()
    screenshot(page, "mail-settings-oauth", docs=True)

    page.get_by_label("Protocol").select_option(label="SMTP")
    expect(page.get_by_label("SMTP Port")).to_have_value("587")
    expect_limits(page, "", "", "")
    page.set_viewport_size({"width": 400, "height": 800})
    screenshot(page, "mail-settings-narrow", docs=True)


def test_test_connection_logs_in_or_says_why_not(admin_page: Page, peer: SmtpPeer) -> None:
    page = admin_page
    fill_smtp(page, peer, SMTP_PASSWORD)
    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_role("button", name="Test connection")).to_be_enabled()
    expect(page.get_by_role("status")).to_have_text(
        f"Connected to {peer.host}:{peer.port} as {SMTP_USER}"
    )
    expect(page.get_by_role("status")).to_have_class(re.compile(r"\bok\b"))

    page.get_by_label("SMTP Password").fill("wrong password")
    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_role("status")).to_contain_text("535")
    expect(page.get_by_role("status")).to_contain_text("Authentication credentials invalid")
    expect(page.get_by_role("status")).to_have_class(re.compile(r"\bfail\b"))
    screenshot(page, "mail-settings-test-connection-failed")


def test_send_test_email_reaches_the_from_mailbox(admin_page: Page, peer: SmtpPeer) -> None:
    page = admin_page
    before = len(peer.messages)
    fill_smtp(page, peer, SMTP_PASSWORD)
    peer.data_delay_seconds = 1.0
    try:
        page.get_by_role("button", name="Send test email").click()
        # While the request runs, no button can start another.
        for name in ("Send test email", "Test connection", "Save", "Cancel"):
            expect(page.get_by_role("button", name=name)).to_be_disabled()
        expect(page.get_by_role("status")).to_have_text(f"Sending a test e-mail to {FROM}…")
    finally:
        peer.data_delay_seconds = 0.0
    expect(page.get_by_role("status")).to_have_text(f"Test e-mail sent to {FROM}")
    expect(page.get_by_role("status")).to_have_class(re.compile(r"\bok\b"))
    [arrived] = peer.wait_for_messages(before + 1)[before:]
    assert arrived.rcpt_tos == (FROM,)
    screenshot(page, "mail-settings-test-email-sent")


def test_save_persists_and_keeps_the_password_secret(admin_page: Page, peer: SmtpPeer) -> None:
    page = admin_page
    fill_smtp(page, peer, SMTP_PASSWORD)
    page.get_by_label("From Mailbox").fill("not an address")
    page.get_by_role("button", name="Save").click()
    mailbox_error = page.locator("#error-from_mailbox")
    expect(mailbox_error).to_be_visible()
    expect(page.get_by_label("From Mailbox")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("From Mailbox")).to_have_accessible_description(re.compile(r"\S"))
    screenshot(page, "mail-settings-field-error")

    page.get_by_label("From Mailbox").fill(FROM)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    expect(mailbox_error).to_be_hidden()

    page.reload()
    expect(page.get_by_text(re.compile(r"Version \d+ · saved"))).to_be_visible()
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value(peer.host)
    expect(page.get_by_label("SMTP Port")).to_have_value(str(peer.port))
    expect(page.get_by_label("From Mailbox")).to_have_value(FROM)
    expect(page.get_by_label("SMTP Username")).to_have_value(SMTP_USER)
    expect(page.get_by_label("TLS mode")).to_have_value("starttls")
    password = page.get_by_label("SMTP Password")
    expect(password).to_have_value("")
    expect(password).to_have_attribute("placeholder", KEEP_SECRET)
    assert SMTP_PASSWORD not in page.content()
    screenshot(page, "mail-settings-saved")

    # The empty password field means the saved one: it still logs in.
    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_role("status")).to_have_class(re.compile(r"\bok\b"))


def test_another_server_needs_the_password_again(
    admin_page: Page, env: dict[str, str], peer: SmtpPeer
) -> None:
    login = ("--tls", "starttls", "--username", SMTP_USER)
    save_smtp(env, "--server", peer.host, "--port", str(peer.port), *login, password=SMTP_PASSWORD)
    client = redis.Redis.from_url(env["OUTBOX_REDIS_URL"])
    saved = client.hgetall(SETTINGS_KEY)
    page = admin_page
    page.reload()
    password = page.get_by_label("SMTP Password")
    expect(password).to_have_attribute("placeholder", KEEP_SECRET)

    # The password left empty, the server changed: the saved password would go elsewhere.
    page.get_by_label("SMTP Server", exact=True).fill("mail.example.com")
    page.get_by_role("button", name="Save").click()
    expect(password).to_have_attribute("aria-invalid", "true")
    expect(password).to_have_accessible_description(
        "the server changed: enter the password again (a saved password is used only with "
        "the settings it was saved for)"
    )
    expect(password).to_be_focused()
    expect(password).to_have_attribute("placeholder", "")  # no longer "leave empty to keep"
    expect(page.get_by_role("status")).to_have_text("Not saved: check the marked field.")
    screenshot(page, "mail-settings-password-again")
    assert client.hgetall(SETTINGS_KEY) == saved  # nothing was saved
    client.close()

    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value(peer.host)
    expect(password).to_have_attribute("placeholder", KEEP_SECRET)


def test_cancel_discards_edits(admin_page: Page, env: dict[str, str]) -> None:
    save_smtp(env, "--server", "mail.example.com", "--port", "2525", "--tls", "none")
    page = admin_page
    page.reload()
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value("mail.example.com")

    page.get_by_label("SMTP Server", exact=True).fill("typo.example.com")
    page.get_by_label("SMTP Port").fill("70000")
    page.get_by_label("From Mailbox").fill("someone@example.com")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#error-port")).to_be_visible()
    page.get_by_label("Protocol").select_option(label="OAuth")
    graph_group(page).get_by_label("Tenant").fill("contoso")
    page.get_by_role("button", name="Cancel").click()

    expect(page.get_by_label("Protocol")).to_have_value("smtp")
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value("mail.example.com")
    expect(page.get_by_label("SMTP Port")).to_have_value("2525")
    expect(page.get_by_label("TLS mode")).to_have_value("none")
    expect(page.get_by_label("From Mailbox")).to_have_value(FROM)
    expect(page.locator("#error-port")).to_be_hidden()
    expect(page.get_by_role("status")).to_contain_text("discarded")
    page.get_by_label("Protocol").select_option(label="OAuth")
    expect(graph_group(page).get_by_label("Tenant")).to_have_value("")
    screenshot(page, "mail-settings-cancelled")


@pytest.mark.usefixtures("nothing_saved")
def test_smtp_logs_in_with_oauth2_and_keeps_the_client_secret(admin_page: Page) -> None:
    page = admin_page
    page.get_by_label("From Mailbox").fill(FROM)
    page.get_by_label("SMTP Server", exact=True).fill("smtp.office365.com")
    page.get_by_label("SMTP Server", exact=True).press("Tab")
    expect_limits(page, *EXCHANGE_ONLINE)
    page.get_by_label("Authentication").select_option(label="OAuth 2.0")
    oauth2 = smtp_oauth2_group(page)
    expect(page.get_by_label("SMTP Username")).to_be_hidden()
    expect(page.get_by_label("SMTP Password")).to_be_hidden()
    expect(oauth2.get_by_label("Username")).to_have_value("")
    expect(oauth2.get_by_label("Username")).to_have_accessible_description(
        "The mailbox that logs in; empty: the from mailbox"
    )
    expect(oauth2.get_by_label("Instance")).to_have_value(DEFAULT_INSTANCE)
    expect(oauth2.get_by_label("Scope")).to_have_value(DEFAULT_SMTP_SCOPE)
    for empty in ("Tenant", "Client ID", "Client Secret"):
        expect(oauth2.get_by_label(empty)).to_have_value("")
    expect(oauth2.get_by_label("Client Secret")).to_have_attribute("type", "password")
    expect(page.get_by_label("API URL")).to_be_hidden()

    # Without the app registration: the fields that need it say so.
    page.get_by_role("button", name="Save").click()
    for required in ("Tenant", "Client ID"):
        field = oauth2.get_by_label(required)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_accessible_description("required with auth oauth2")
    expect(page.get_by_role("status")).to_have_text("Not saved: check the marked field.")

    oauth2.get_by_label("Tenant").fill("contoso.onmicrosoft.com")
    oauth2.get_by_label("Client ID").fill("00000000-0000-4000-8000-000000000001")
    oauth2.get_by_label("Client Secret").fill("browser-Client-S3cret")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    expect(oauth2.get_by_label("Tenant")).not_to_have_attribute("aria-invalid", "true")

    page.reload()
    expect(page.get_by_text(re.compile(r"Version \d+ · saved"))).to_be_visible()
    expect(page.get_by_label("Authentication")).to_have_value("oauth2")
    expect(page.get_by_label("SMTP Server", exact=True)).to_have_value("smtp.office365.com")
    expect(oauth2.get_by_label("Username")).to_have_value("")
    expect(oauth2.get_by_label("Tenant")).to_have_value("contoso.onmicrosoft.com")
    expect(oauth2.get_by_label("Client ID")).to_have_value("00000000-0000-4000-8000-000000000001")
    expect(oauth2.get_by_label("Instance")).to_have_value(DEFAULT_INSTANCE)
    expect(oauth2.get_by_label("Scope")).to_have_value(DEFAULT_SMTP_SCOPE)
    expect_limits(page, *EXCHANGE_ONLINE)
    secret = oauth2.get_by_label("Client Secret")
    expect(secret).to_have_value("")
    expect(secret).to_have_attribute("placeholder", KEEP_SECRET)
    assert "browser-Client-S3cret" not in page.content()
    screenshot(page, "mail-settings-smtp-oauth2", docs=True)

    # Back to a password: its fields again, empty (the client secret is not a password).
    page.get_by_label("Authentication").select_option(label="Password")
    expect(oauth2.get_by_label("Tenant")).to_be_hidden()
    expect(page.get_by_label("SMTP Username")).to_have_value("")
    expect(page.get_by_label("SMTP Password")).to_have_attribute("placeholder", "")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_label("Authentication")).to_have_value("oauth2")
    expect(oauth2.get_by_label("Tenant")).to_have_value("contoso.onmicrosoft.com")


@pytest.mark.usefixtures("nothing_saved")
def test_a_known_provider_prefills_its_sending_limits(admin_page: Page) -> None:
    page = admin_page
    limits = page.get_by_role("group", name="Sending limits")
    server = page.get_by_label("SMTP Server", exact=True)
    expect_limits(page, "", "", "")

    server.fill("smtp.office365.com")
    server.press("Tab")
    expect_limits(page, *EXCHANGE_ONLINE)
    # Still the provider's values: another provider's replace them.
    server.fill("smtp.gmail.com")
    server.press("Tab")
    expect_limits(page, "", "2000", "100")
    screenshot(page, "mail-settings-limits-prefilled")

    # Once the administrator set one, no server changes them.
    limits.get_by_label("Max recipients per day").fill("1500")
    server.fill("smtp.office365.com")
    server.press("Tab")
    expect_limits(page, "", "1500", "100")

    # A limit below one is marked at its field; an empty one means none.
    page.get_by_label("From Mailbox").fill(FROM)
    minute = limits.get_by_label("Max messages per minute")
    minute.fill("0")
    page.get_by_role("button", name="Save").click()
    expect(minute).to_have_attribute("aria-invalid", "true")
    expect(minute).to_have_accessible_description(re.compile(r"greater than or equal to 1"))
    screenshot(page, "mail-settings-limit-error")
    minute.fill("")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Saved \(version \d+\)$"))

    page.reload()
    expect(server).to_have_value("smtp.office365.com")
    expect_limits(page, "", "1500", "100")
    page.get_by_label("Protocol").select_option(label="OAuth")
    expect_limits(page, *EXCHANGE_ONLINE)


def test_deliveries_show_a_failure_and_retry_it(
    page: Page,
    site: str,
    admin_key: str,
    env: dict[str, str],
    peer: SmtpPeer,
    worker_process: Service,
    tmp_path: Path,
) -> None:
    closed = free_port()
    save_smtp(env, "--server", "127.0.0.1", "--port", str(closed), "--tls", "none")
    sent = run_outbox(
        env, "send", "--to", "alice@example.com", "--subject", "Quarterly report", "--text", "Q3"
    )
    assert sent.returncode == 0, sent.stderr

    sign_in(page, site, admin_key, "/deliveries")
    expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
    report = page.get_by_role("row").filter(has_text="Quarterly report")
    expect(report.get_by_text("failed", exact=True)).to_be_visible(timeout=SLOW)
    expect(report).to_contain_text("refused")

    page.get_by_label("Status").select_option(label="Sent")
    expect(page.get_by_text("No sent deliveries.")).to_be_visible()
    page.get_by_label("Status").select_option(label="Failed")
    expect(report).to_be_visible()
    page.get_by_label("Status").select_option(label="All")

    # Fix the settings, and have more mail to show: one sent, one partly refused.
    save_smtp(
        env,
        "--server",
        peer.host,
        "--port",
        str(peer.port),
        "--tls",
        "starttls",
        "--username",
        SMTP_USER,
        password=SMTP_PASSWORD,
    )
    peer.rcpt_replies["nobody@example.com"] = "550 5.1.1 No such user here"
    batch = tmp_path / "more.jsonl"
    batch.write_text(
        "\n".join(
            json.dumps(message)
            for message in (
                {"to": ["bob@example.com"], "subject": "Welcome aboard", "text": "Hi"},
                {
                    "to": ["carol@example.com", "nobody@example.com"],
                    "subject": "Team update",
                    "text": "News",
                },
            )
        )
    )
    more = run_outbox(env, "send", "--batch", str(batch))
    assert more.returncode == 0, more.stderr
    before = len(peer.messages)

    report.get_by_role("button", name="Retry").click()
    expect(report.get_by_text("sent", exact=True)).to_be_visible(timeout=SLOW)
    expect(report.get_by_role("button", name="Retry")).to_have_count(0)
    arrived = peer.wait_for_messages(before + 1)
    assert any(m.rcpt_tos == ("alice@example.com",) for m in arrived[before:])
    partly = page.get_by_role("row").filter(has_text="Team update")
    expect(partly.get_by_text("partially sent")).to_be_visible(timeout=SLOW)
    expect(partly.get_by_role("button", name="Retry")).to_be_visible()

    # The delivery's recipients and attempts, opened from the keyboard.
    report.get_by_role("button", name="Quarterly report").focus()
    page.keyboard.press("Enter")
    detail = page.get_by_role("region", name="Quarterly report")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("outbox (CLI or Python)")  # no API key created it
    expect(detail.get_by_role("row").filter(has_text="alice@example.com")).to_contain_text("sent")
    attempts = detail.get_by_role("table").nth(1)
    expect(attempts.get_by_role("row")).to_have_count(3)  # the header, then two attempts
    expect(attempts).to_contain_text("refused")
    expect(page.get_by_role("row").filter(has_text="Welcome aboard")).to_contain_text("sent")
    screenshot(page, "deliveries", docs=True)
    page.set_viewport_size({"width": 400, "height": 800})
    screenshot(page, "deliveries-narrow")


def test_a_delivery_waits_for_the_sending_limit(
    page: Page,
    site: str,
    admin_key: str,
    env: dict[str, str],
    worker_process: Service,
    tmp_path: Path,
) -> None:
    # A mailbox of its own: the limit belongs to the sending account, and no other test's
    # mail waits behind these two.
    with smtp_peer() as plain:
        save_smtp(
            env,
            "--server",
            plain.host,
            "--port",
            str(plain.port),
            "--tls",
            "none",
            "--max-messages-per-minute",
            "1",
            from_mailbox="limited@example.com",
        )
        batch = tmp_path / "two.jsonl"
        batch.write_text(
            "\n".join(
                json.dumps({"to": ["erin@example.com"], "subject": subject, "text": "Hi"})
                for subject in ("First of two", "Second of two")
            )
        )
        sent = run_outbox(env, "send", "--batch", str(batch))
        assert sent.returncode == 0, sent.stderr

        sign_in(page, site, admin_key, "/deliveries")
        both = page.get_by_role("row").filter(has_text=" of two")
        waiting = both.filter(has=page.get_by_text("waiting", exact=True))
        expect(waiting).to_have_count(1, timeout=SLOW)
        expect(both.filter(has=page.get_by_text("sent", exact=True))).to_have_count(1)
        expect(waiting).to_contain_text(
            re.compile(r"waiting for the sending limit, 1 per minute, until \d")
        )
        expect(waiting.get_by_role("button", name="Retry")).to_have_count(0)
        assert len(plain.wait_for_messages(1)) == 1

        page.get_by_label("Status").select_option(label="Waiting")
        expect(both).to_have_count(1)
        waiting.get_by_role("button", name=re.compile(r" of two$")).click()
        detail = page.get_by_role("region", name=re.compile(r" of two$"))
        expect(detail.get_by_text("Waiting for", exact=True)).to_be_visible()
        expect(detail.get_by_text("the sending limit, 1 per minute", exact=True)).to_be_visible()
        expect(detail.get_by_text("Next attempt", exact=True)).to_be_visible()
        screenshot(page, "deliveries-waiting")
        assert len(plain.messages) == 1  # the second one still waits


@pytest.mark.usefixtures("paused_account_cleared")
def test_a_providers_quota_reply_pauses_sending(
    page: Page, site: str, admin_key: str, env: dict[str, str], worker_process: Service
) -> None:
    # Exchange Online's per-minute submission quota, as it answers the end of DATA
    # ("Exchange Online limits"; the 554 5.2.0 SubmissionQuotaExceeded NDR).
    quota = (
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; "
        "Failed to process message due to a permanent exception"
    )
    with smtp_peer() as plain:
        save_smtp(
            env,
            "--server",
            plain.host,
            "--port",
            str(plain.port),
            "--tls",
            "none",
            from_mailbox="busy@example.com",
        )
        plain.data_replies.append(quota)
        sent = run_outbox(
            env, "send", "--to", "frank@example.com", "--subject", "Over quota", "--text", "Hi"
        )
        assert sent.returncode == 0, sent.stderr

        sign_in(page, site, admin_key, "/deliveries")
        row = page.get_by_role("row").filter(has_text="Over quota")
        expect(row.get_by_text("waiting", exact=True)).to_be_visible(timeout=SLOW)
        expect(row).to_contain_text("waiting for the provider's pause of 554 5.2.0 STOREDRV")

        page.get_by_role("link", name="Mail Settings").click()
        banner = page.get_by_role("status").filter(has_text="Sending is paused")
        expect(banner).to_have_text(
            re.compile(r"^Sending is paused until \d.*: 554 5\.2\.0 STOREDRV\.Submission")
        )
        screenshot(page, "mail-settings-paused")
