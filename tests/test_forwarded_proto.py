"""``outbox api`` behind a TLS proxy: X-Forwarded-Proto is believed from its proxy only."""

from __future__ import annotations

import httpx
import pytest

from config.api_keys import ApiKeyStore, Role
from config.process import ProcessSettings
from peers.processes import Service
from peers.redis_server import free_port
from tasks.context import OutboxContext

# The proxy's address: loopback answers all of 127.0.0.0/8, so a client can come from an
# address other than the 127.0.0.1 uvicorn would believe on its own.
PROXY = "127.0.0.2"


@pytest.mark.parametrize(
    ("trusted", "source", "secure"),
    [
        (PROXY, PROXY, True),
        ("10.0.0.0/8, 127.0.0.0/24", PROXY, True),
        ("", "127.0.0.1", False),
        ("10.1.2.3", PROXY, False),
    ],
    ids=["the-proxy", "its-network", "no-proxy-configured", "another-proxy"],
)
def test_the_session_cookie_is_secure_behind_the_configured_proxy_only(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    trusted: str,
    source: str,
    secure: bool,
) -> None:
    key = ApiKeyStore(outbox_context.redis).create("ann", Role.ADMIN)
    port = free_port()
    env = {**outbox_env, "OUTBOX_FORWARDED_ALLOW_IPS": trusted}
    api = Service(["outbox", "api", "--port", str(port)], env)
    try:
        api.wait_for_output("Uvicorn running on")
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
            signed_in = client.post(
                f"http://127.0.0.1:{port}/signin",
                data={"key": key},
                headers={"X-Forwarded-Proto": "https"},
                timeout=30,
            )
    finally:
        api.stop()
    assert signed_in.status_code == 303
    attributes = [part.strip() for part in signed_in.headers["set-cookie"].split(";")]
    assert ("Secure" in attributes) is secure


def test_a_proxy_that_is_no_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_FORWARDED_ALLOW_IPS", "127.0.0.1,proxy.internal")
    with pytest.raises(ValueError, match=r"'proxy\.internal' is not an IP address or network"):
        ProcessSettings()
