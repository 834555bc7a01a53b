"""The Webhooks screen in a real browser against the real ``outbox api`` and ``outbox worker``:
adding an endpoint (refused URLs and events named by field, the signing secret shown once),
the events it then receives, signed (checked with the independent ``standardwebhooks``
package), every attempt with the receiver's answer, and removing it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect
from standardwebhooks import Webhook

from peers.processes import Service
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.browser.conftest import screenshot, sign_in
from tests.support.webhook_receiver import Receiver, webhook_receiver

SLOW = 30_000  # ms: a worker's round trip, then the schedule's first retry 5 s later


@pytest.fixture
def api(site: str, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=site, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def plain_peer(api: httpx.Client) -> Iterator[SmtpPeer]:
    """An SMTP server without TLS, saved as the mail settings."""
    with smtp_peer() as running:
        body = {
            "protocol": "smtp",
            "from_mailbox": "robot@example.com",
            "server": running.host,
            "port": running.port,
            "tls": "none",
        }
        answer = api.put("/api/settings/mail", json=body)
        assert answer.status_code == 200, answer.text
        yield running


@pytest.fixture
def receiver(api: httpx.Client) -> Iterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1; every endpoint is removed after the test."""
    with webhook_receiver() as running:
        yield running
    for endpoint in api.get("/api/webhooks").json():
        api.delete(f"/api/webhooks/{endpoint['id']}")


def test_an_endpoint_is_added_receives_signed_events_shows_its_attempts_and_is_removed(
    page: Page,
    site: str,
    admin_key: str,
    producer_key: str,
    api: httpx.Client,
    worker_process: Service,
    plain_peer: SmtpPeer,
    receiver: Receiver,
) -> None:
    sign_in(page, site, admin_key, "/deliveries")
    page.get_by_role("navigation").get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    expect(page.get_by_text("No endpoints yet: add one below.")).to_be_visible()
    expect(page.get_by_text("Nothing sent to an endpoint yet.")).to_be_visible()
    # The producer key is offered to tie the endpoint to; every key is the default.
    expect(page.get_by_label("Deliveries of")).to_have_value("")
    expect(page.get_by_label("Deliveries of").locator("option", has_text="pat")).to_have_count(1)

    # Plain http to a host other than loopback is refused, beside the field.
    page.get_by_label("URL", exact=True).fill("http://hooks.example.com/outbox")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#error-url")).to_contain_text("must be https://")
    expect(page.get_by_label("URL", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#endpoints-status")).to_have_text(
        "The endpoint was not added: check the marked field."
    )

    # No event chosen: refused, naming the events.
    page.get_by_label("URL", exact=True).fill(receiver.url)
    for box in page.get_by_role("group", name="Events").get_by_role("checkbox").all():
        box.uncheck()
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("#error-events")).to_contain_text("name at least one event")
    expect(page.locator("#error-url")).to_be_hidden()

    for name in ("sent", "partially sent", "failed"):
        page.get_by_role("group", name="Events").get_by_label(name, exact=True).check()
    receiver.answers = [500, 200]
    page.get_by_role("button", name="Add endpoint").click()
    secret_box = page.get_by_role("region", name=f"Signing secret of {receiver.url}")
    expect(secret_box).to_contain_text("it is shown only this once")
    secret = secret_box.get_by_label("Signing secret", exact=True).inner_text()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", secret), secret
    row = page.get_by_role("row").filter(has_text=receiver.url)
    expect(row).to_contain_text("sent, partially_sent, failed")
    expect(row).to_contain_text("every key")
    screenshot(page, "webhooks-secret")
    # The secret is not kept anywhere the page or the API can show it again.
    assert secret not in api.get("/api/webhooks").text
    page.get_by_role("button", name="Done").click()
    expect(secret_box).to_be_hidden()
    page.reload()
    expect(page.get_by_role("row").filter(has_text=receiver.url)).to_be_visible()
    assert secret not in page.content()

    # A producer's e-mail: the receiver answers 500, then 200 to the retry 5 s later.
    answer = httpx.post(
        f"{site}/api/emails",
        headers={"Authorization": f"Bearer {producer_key}"},
        json={"to": ["team@example.com"], "subject": "Nightly run", "text": "41 passed"},
    )
    assert answer.status_code == 202, answer.text
    delivery_id = answer.json()["id"]
    first, second = receiver.wait_for(2, timeout=30)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    event = Webhook(secret).verify(second.body, second.headers)
    assert (event["delivery_id"], event["type"]) == (delivery_id, "sent")

    deliveries = page.get_by_role("region", name="Recent webhook deliveries")
    deliveries.get_by_role("button", name="Refresh").click()
    sent_row = deliveries.get_by_role("row").filter(has_text=delivery_id)
    expect(sent_row.get_by_text("delivered", exact=True)).to_be_visible(timeout=SLOW)
    expect(sent_row).to_contain_text(receiver.url)
    sent_row.get_by_text("2", exact=True).click()  # the attempts, opened
    attempts = sent_row.get_by_role("listitem")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("500: receiver says no")
    expect(attempts.nth(1)).to_contain_text("200: ok")
    screenshot(page, "webhooks", docs=True)

    # Removed after a confirmation: nothing more is sent to it.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Remove {receiver.url}").click()
    expect(page.locator("#endpoints-status")).to_have_text(
        f"{receiver.url} is removed: nothing more is sent to it."
    )
    expect(page.get_by_text("No endpoints yet: add one below.")).to_be_visible()
    assert api.get("/api/webhooks").json() == []
