"""The outbox command line as scripts use it: outputs, exit codes, field-named errors."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.fernet import Fernet

from peers.processes import OUTBOX, run_outbox
from peers.redis_server import free_port
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tests.support.in_process_worker import InProcessWorker
from worker.records import DeliveryStatus


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        yield running


def set_smtp(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    result = run_outbox(env, "settings", "set", "smtp", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr


def server(peer: SmtpPeer) -> list[str]:
    return ["--from-mailbox", "robot@example.com", "--server", peer.host, "--port", str(peer.port)]


def plain(peer: SmtpPeer) -> list[str]:
    return [*server(peer), "--tls", "none"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--from-mailbox", "robot@example.com", "--port", "0"], "port"),
        (["--from-mailbox", "robot"], "from_mailbox"),
        (["--from-mailbox", "robot@example.com", "--server", "not a host"], "server"),
    ],
)
def test_invalid_settings_exit_2_naming_the_field(
    outbox_env: dict[str, str], args: list[str], field: str
) -> None:
    result = run_outbox(outbox_env, "settings", "set", "smtp", *args)
    assert result.returncode == 2
    assert f"error: {field}: " in result.stderr


def test_checks_without_settings_fail_clearly(outbox_env: dict[str, str]) -> None:
    for command in ("test-connection", "send-test"):
        result = run_outbox(outbox_env, "settings", command)
        assert result.returncode == 1
        assert "not configured" in result.stderr


def test_test_connection_reports_precise_reasons(
    outbox_env: dict[str, str], server_certificate: trustme.LeafCert
) -> None:
    closed_port = free_port()
    set_smtp(
        outbox_env,
        "--from-mailbox",
        "r@example.com",
        "--server",
        "127.0.0.1",
        "--port",
        str(closed_port),
    )
    refused = run_outbox(outbox_env, "settings", "test-connection")
    assert refused.returncode == 1
    assert f"connection to 127.0.0.1:{closed_port} refused" in refused.stderr

    with smtp_peer(
        tls="starttls", certificate=server_certificate, credentials={"u": "right"}
    ) as peer:
        login = ["--username", "u", "--password-stdin"]
        set_smtp(outbox_env, *server(peer), *login, stdin="wrong\n")
        rejected = run_outbox(outbox_env, "settings", "test-connection")
        assert rejected.returncode == 1
        assert "rejected the login: 535" in rejected.stderr
        assert "wrong" not in rejected.stderr.replace("rejected", "")

    with smtp_peer(tls="implicit", certificate=trustme.CA().issue_cert("127.0.0.1")) as peer:
        set_smtp(outbox_env, *server(peer), "--tls", "implicit")
        untrusted = run_outbox(outbox_env, "settings", "test-connection")
        assert untrusted.returncode == 1
        assert "not trusted" in untrusted.stderr
        assert "accept any certificate" in untrusted.stderr


def test_plaintext_login_is_refused_unless_tls_none(outbox_env: dict[str, str]) -> None:
    with smtp_peer(credentials={"u": "pw"}) as peer:
        set_smtp(outbox_env, *server(peer), "--username", "u", "--password-stdin", stdin="pw\n")
        refused = run_outbox(outbox_env, "settings", "test-connection")
        assert refused.returncode == 1
        assert "refusing to send the password unencrypted" in refused.stderr
        # TLS mode none is a new place for the password to go: it is entered again.
        login = ["--username", "u", "--password-stdin"]
        set_smtp(outbox_env, *plain(peer), *login, stdin="pw\n")
        allowed = run_outbox(outbox_env, "settings", "test-connection")
        assert allowed.returncode == 0, allowed.stderr


def test_send_test_goes_to_the_from_mailbox(outbox_env: dict[str, str], peer: SmtpPeer) -> None:
    set_smtp(outbox_env, *plain(peer))
    result = run_outbox(outbox_env, "settings", "send-test")
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "test e-mail sent to robot@example.com",
    )
    [message] = peer.wait_for_messages(1)
    assert message.rcpt_tos == ("robot@example.com",)

    peer.rcpt_replies["robot@example.com"] = "550 5.7.1 Relaying denied"
    refused = run_outbox(outbox_env, "settings", "send-test")
    assert refused.returncode == 1
    assert "550 5.7.1 Relaying denied" in refused.stderr


def test_send_with_files_then_delivered(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    peer: SmtpPeer,
    tmp_path: Path,
) -> None:
    set_smtp(outbox_env, *plain(peer))
    (tmp_path / "body.txt").write_text("plain text\n")
    (tmp_path / "body.html").write_text("<p>html</p>\n")
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 fake")
    result = run_outbox(
        outbox_env,
        "send",
        "--to",
        "a@example.com",
        "--bcc",
        "hidden@example.com",
        "--subject",
        "Files",
        "--text-file",
        str(tmp_path / "body.txt"),
        "--html-file",
        str(tmp_path / "body.html"),
        "--attach",
        str(tmp_path / "report.pdf"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    delivery_id = json.loads(result.stdout)["id"]
    assert worker.deliver(delivery_id) == ["sent"]
    [received] = peer.wait_for_messages(1)
    assert received.rcpt_tos == ("a@example.com", "hidden@example.com")
    assert b"hidden@example.com" not in received.data
    assert b'filename="report.pdf"' in received.data
    assert base64.b64encode(b"%PDF-1.4 fake") in received.data


def test_batch_enqueues_valid_lines_and_reports_invalid_ones(
    outbox_env: dict[str, str], outbox_context: OutboxContext, tmp_path: Path
) -> None:
    lines = [
        {"to": ["a@example.com"], "subject": "one", "text": "1"},
        {"to": ["broken"], "subject": "two"},
        {
            "to": ["b@example.com"],
            "subject": "three",
            "html": "<b>3</b>",
            "attachments": [
                {
                    "name": "x.txt",
                    "content_type": "text/plain",
                    "content_base64": base64.b64encode(b"x").decode(),
                }
            ],
        },
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_outbox(outbox_env, "send", "--batch", str(batch), "--json")
    assert result.returncode == 2
    rows = [json.loads(row) for row in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3]
    assert rows[1]["error"].startswith("to[0]: ")
    assert "line 2: to[0]" in result.stderr
    queued = {
        r.id: r.message.subject for r in outbox_context.deliveries.recent(DeliveryStatus.QUEUED)
    }
    assert queued == {rows[0]["id"]: "one", rows[2]["id"]: "three"}


# Runs a command and prints the peak resident memory (KiB) of it alone.
_PEAK_RSS = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def test_a_200_mb_batch_is_streamed_not_read_whole(
    outbox_env: dict[str, str], outbox_context: OutboxContext, tmp_path: Path
) -> None:
    batch = tmp_path / "large.jsonl"
    body = "x" * 100_000
    with batch.open("w") as handle:
        for number in range(2_000):
            handle.write(
                json.dumps({"to": ["a@example.com"], "subject": f"m{number}", "text": body})
            )
            handle.write("\n")
    assert batch.stat().st_size > 200_000_000
    measured = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, OUTBOX, "send", "--batch", str(batch)],
        env={**os.environ, **outbox_env},
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mb = int(measured.stdout) / 1024
    # Reading the file whole would hold at least its 200 MB; chunks hold a few MB at a time.
    assert peak_mb < 150, peak_mb
    assert len(outbox_context.deliveries.ids_with_status(DeliveryStatus.QUEUED)) == 2_000


def test_list_status_and_purge(
    outbox_env: dict[str, str],
    outbox_context: OutboxContext,
    worker: InProcessWorker,
    peer: SmtpPeer,
) -> None:
    set_smtp(outbox_env, *plain(peer))
    sent_id = run_outbox(
        outbox_env, "send", "--to", "a@example.com", "--subject", "x", "--text", "x"
    ).stdout.strip()
    queued_id = run_outbox(
        outbox_env, "send", "--to", "b@example.com", "--subject", "y", "--text", "y"
    ).stdout.strip()
    worker.deliver(sent_id)

    listed = run_outbox(outbox_env, "list", "--status", "sent", "--json")
    assert [row["id"] for row in json.loads(listed.stdout)] == [sent_id]
    everything = run_outbox(outbox_env, "list")
    assert sent_id in everything.stdout
    assert queued_id in everything.stdout
    bad_status = run_outbox(outbox_env, "list", "--status", "lost")
    assert bad_status.returncode == 2

    human = run_outbox(outbox_env, "status", sent_id)
    assert "sent      a@example.com 250" in human.stdout
    assert "attempt 1" in human.stdout

    assert run_outbox(outbox_env, "purge", "--older-than", "1").stdout.strip() == (
        "purged 0 deliveries"
    )
    assert run_outbox(outbox_env, "purge", "--older-than", "0").stdout.strip() == (
        "purged 1 deliveries"
    )
    assert run_outbox(outbox_env, "status", sent_id).returncode == 1
    assert run_outbox(outbox_env, "status", queued_id).returncode == 0


def test_unreachable_redis_is_a_clear_error(outbox_env: dict[str, str]) -> None:
    port = free_port()
    env = {**outbox_env, "OUTBOX_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    result = run_outbox(env, "status", "0" * 32)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: Redis at 127.0.0.1:{port} is unreachable or not answering (ConnectionError)\n"
    )


def test_a_stalled_redis_is_named_within_five_seconds(outbox_env: dict[str, str]) -> None:
    """A Redis that accepts connections and never answers (a hung server, a black hole)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        env = {**outbox_env, "OUTBOX_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        for command in (["list"], ["send", "--to", "a@example.com", "--subject", "s"]):
            started = time.monotonic()
            result = run_outbox(env, *command)
            took = time.monotonic() - started
            assert result.returncode == 1
            assert f"Redis at 127.0.0.1:{port} is unreachable or not answering" in result.stderr
            assert "Traceback" not in result.stderr
            assert took < 6.5, took  # about five seconds, plus starting the command


def test_settings_show_needs_no_secret_key(outbox_env: dict[str, str], peer: SmtpPeer) -> None:
    set_smtp(outbox_env, *plain(peer), "--username", "u", "--password-stdin", stdin="pw\n")
    other_key = {**outbox_env, "OUTBOX_SECRET_KEY": Fernet.generate_key().decode()}
    shown = run_outbox(other_key, "settings", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["password_set"] is True
    checked = run_outbox(other_key, "settings", "test-connection")
    assert checked.returncode == 1
    assert "OUTBOX_SECRET_KEY" in checked.stderr


def test_saving_without_the_secret_refuses_when_the_stored_one_is_unreadable(
    outbox_env: dict[str, str], peer: SmtpPeer
) -> None:
    set_smtp(outbox_env, *plain(peer), "--username", "u", "--password-stdin", stdin="pw\n")
    other_key = {**outbox_env, "OUTBOX_SECRET_KEY": Fernet.generate_key().decode()}
    refused = run_outbox(other_key, "settings", "set", "smtp", *plain(peer), "--username", "u")
    assert refused.returncode == 1
    assert "cannot be decrypted with any key of OUTBOX_SECRET_KEY" in refused.stderr
    shown = json.loads(run_outbox(outbox_env, "settings", "show", "--json").stdout)
    assert shown["version"] == 1  # nothing was saved
    # Entering the secret again with the new key works.
    set_smtp(other_key, *plain(peer), "--username", "u", "--password-stdin", stdin="pw2\n")


def test_secret_keys_rotate_without_entering_the_secret_again(outbox_env: dict[str, str]) -> None:
    with smtp_peer(credentials={"u": "pw"}) as authenticating:
        set_smtp(
            outbox_env,
            *plain(authenticating),
            "--username",
            "u",
            "--password-stdin",
            stdin="pw\n",
        )
        old_key, new_key = outbox_env["OUTBOX_SECRET_KEY"], Fernet.generate_key().decode()
        both = {**outbox_env, "OUTBOX_SECRET_KEY": f"{new_key},{old_key}"}
        # The old ciphertext is readable while both keys are configured ...
        assert run_outbox(both, "settings", "test-connection").returncode == 0
        rotated = run_outbox(both, "secrets", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        assert rotated.stdout.startswith("re-encrypted 1 stored secret")
        # ... and after the rotation the new key alone reads it.
        new_only = {**outbox_env, "OUTBOX_SECRET_KEY": new_key}
        checked = run_outbox(new_only, "settings", "test-connection")
        assert checked.returncode == 0, checked.stderr
        assert run_outbox(outbox_env, "settings", "test-connection").returncode == 1


def test_a_malformed_second_key_is_named_without_quoting_it(outbox_env: dict[str, str]) -> None:
    bad = {**outbox_env, "OUTBOX_SECRET_KEY": outbox_env["OUTBOX_SECRET_KEY"] + ",not-a-key"}
    result = run_outbox(bad, "secrets", "rotate")
    assert result.returncode == 2
    assert "key 2 of 2 is not a Fernet key" in result.stderr
    assert "not-a-key" not in result.stderr


def test_accepting_any_certificate_is_said_when_saved(
    outbox_env: dict[str, str], peer: SmtpPeer
) -> None:
    saved = run_outbox(
        outbox_env, "settings", "set", "smtp", *server(peer), "--accept-any-certificate"
    )
    assert saved.returncode == 0
    assert saved.stderr.startswith("warning: accept any certificate is on: the certificate of")
    verified = run_outbox(outbox_env, "settings", "set", "smtp", *server(peer))
    assert "warning" not in verified.stderr
