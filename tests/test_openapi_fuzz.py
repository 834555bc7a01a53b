"""Schemathesis (a fuzzer nobody here wrote) over ``/openapi.json`` of a real API with Redis:
every answer is one the description documents, with the documented body, and nothing
invalid is accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from config.api_keys import ApiKeyStore, KeyLimits, Role
from tasks.context import OutboxContext
from tests.support.served_api import served_api

SCHEMATHESIS = Path(sys.executable).parent / "st"
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Test connection and Send test e-mail reach out to the mail server the generated settings
# name: not something to point a fuzzer at.
EXCLUDED = r"/api/settings/mail/(test-connection|test-email)"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.PRODUCER])
def test_schemathesis_finds_no_undocumented_answer(
    outbox_context: OutboxContext, tmp_path: Path, role: Role
) -> None:
    """As an admin, every operation; as a producer with limits, the answers only producers
    get (403 on admin routes, 404 for a delivery that is not its own, 429 over its limit)."""
    keys = ApiKeyStore(outbox_context.redis)
    admin_key = keys.create("admin", Role.ADMIN)
    keys.create("fuzzed-producer", Role.PRODUCER)
    key = (
        admin_key
        if role is Role.ADMIN
        else keys.create("fuzzer", Role.PRODUCER, KeyLimits.of(max_per_minute=20))
    )
    with served_api(outbox_context) as (host, port):
        delivery_id = _store_what_the_operations_read(f"http://{host}:{port}", admin_key)
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(CONFIG),
                "run",
                f"http://{host}:{port}/openapi.json",
                "--checks",
                "all",
                # Needs state the fuzzer cannot know (a delivery that is failed, a schedule's
                # settings saved): checked by the API tests instead.
                "--exclude-checks",
                "ignored_auth,positive_data_acceptance,use_after_free,ensure_resource_availability",
                "--exclude-path-regex",
                EXCLUDED,
                # Revoking keys at random would revoke the fuzzer's own.
                "--exclude-name",
                "DELETE /api/keys/{name}",
                "--header",
                f"Authorization: Bearer {key}",
                "--max-examples",
                os.environ.get("OUTBOX_FUZZ_EXAMPLES", "40"),
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                os.environ.get("OUTBOX_FUZZ_SEED", "20"),
                # One: Python 3.11's ast.parse, which Hypothesis calls, is not thread-safe.
                "--workers",
                "1",
                "--no-color",
                "--generation-database",
                "none",
                "--request-timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={**os.environ, "OUTBOX_FUZZ_DELIVERY_ID": delivery_id},
        )
    print(run.stdout, run.stderr)  # the whole report, shown by pytest when this fails
    assert run.returncode == 0, "Schemathesis found failures: see the captured output"


def _store_what_the_operations_read(url: str, key: str) -> str:
    """Mail settings, a schedule's lists and a delivery, as a user would store them; the
    delivery's id."""
    admin = {"Authorization": f"Bearer {key}"}
    settings = {
        "protocol": "smtp",
        "server": "127.0.0.1",
        "port": 2525,
        "from_mailbox": "robot@example.com",
        "tls": "none",
    }
    httpx.put(f"{url}/api/settings/mail", headers=admin, json=settings).raise_for_status()
    lists = {"name": "Nightly", "lists": [{"rule": "always", "to": ["team@example.com"]}]}
    httpx.put(
        f"{url}/api/schedules/nightly/notification", headers=admin, json=lists
    ).raise_for_status()
    message = {"to": ["a@example.com"], "subject": "Seed", "text": "x"}
    sent = httpx.post(f"{url}/api/emails", headers=admin, json=message)
    sent.raise_for_status()
    return str(sent.json()["id"])
