"""Browser tests: Debian's chromium, driven by Playwright, against a real ``outbox api``.

Playwright never downloads a browser here (DESIGN.md §5): it launches Debian's binary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect

from peers.processes import ROOT, Service, run_outbox
from peers.redis_server import RedisServer, free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tests.support.environment import fresh_environment

CHROMIUM = "/usr/lib/chromium/chromium"
# The README's screenshots: written to the build folder on every run (a test run leaves the
# checkout as it found it); `make screenshots` points this at docs/screenshots to refresh them.
SCREENSHOTS = Path(
    os.environ.get("OUTBOX_SCREENSHOTS_DIR") or ROOT / "test-results" / "screenshots"
)
DESKTOP = {"width": 1280, "height": 800}
SMTP_USER, SMTP_PASSWORD = "robot", "browser-Secret-Pa55"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make tools does it)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """Each test module names its own server; no --base-url (pytest-playwright's stand-in for
    pytest-base-url's fixture warns that pytest 10 will drop fixtures of its kind)."""
    return None


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": DESKTOP}


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab that fails the test on a script error or a Content-Security-Policy refusal
    (an HTTP error status the page handles, such as 404 before any save, is fine)."""
    tab = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    yield tab
    assert not problems, "the page reported:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    certificate_authority: trustme.CA,
) -> dict[str, str]:
    """One attempt per delivery, so a delivery to a closed port fails at once."""
    return fresh_environment(
        redis_server.url,
        tmp_path_factory.mktemp("browser"),
        certificate_authority,
        OUTBOX_MAX_ATTEMPTS="1",
    )


def _create_key(env: dict[str, str], role: str, name: str) -> str:
    result = run_outbox(env, "keys", "create", "--role", role, "--name", name, "--json")
    assert result.returncode == 0, result.stderr
    key: str = json.loads(result.stdout)["key"]
    return key


@pytest.fixture(scope="module")
def admin_key(env: dict[str, str]) -> str:
    return _create_key(env, "admin", "ann")


@pytest.fixture(scope="module")
def producer_key(env: dict[str, str]) -> str:
    return _create_key(env, "producer", "pat")


@pytest.fixture(scope="module")
def site(env: dict[str, str], admin_key: str) -> Iterator[str]:
    """``outbox api`` on a free port, as `make run` starts it; its address."""
    port = free_port()
    service = Service(["outbox", "api", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        service.wait_for_output("Uvicorn running on")
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


@pytest.fixture(scope="module")
def worker_process(env: dict[str, str]) -> Iterator[Service]:
    """``outbox worker``: a Celery worker in its own process, as the Procfile runs it."""
    service = Service(["outbox", "worker"], env)
    try:
        service.wait_for_output(" ready.")
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def peer(server_certificate: trustme.LeafCert) -> Iterator[SmtpPeer]:
    """An SMTP server that wants STARTTLS (certificate from the test CA) and a login."""
    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={SMTP_USER: SMTP_PASSWORD}
    ) as running:
        yield running


def sign_in(page: Page, site: str, key: str, path: str = "/settings/mail") -> None:
    page.goto(site + path)
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture
def admin_page(page: Page, site: str, admin_key: str) -> Page:
    """The Mail Settings page, signed in with an admin key, its saved values loaded."""
    sign_in(page, site, admin_key)
    expect(page.get_by_role("heading", name="Mail Settings")).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_be_enabled()
    return page


def screenshot(page: Page, name: str, *, docs: bool = False) -> Path:
    """Keep what the page looked like: the README's (``docs``) in ``SCREENSHOTS``, the
    others beside the other Playwright artifacts (test-results/, emptied at each run)."""
    folder = SCREENSHOTS if docs else ROOT / "test-results" / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
