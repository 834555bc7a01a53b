"""Mail settings saved through the CLI, as an administrator sets them up for real processes."""

from __future__ import annotations

from peers.processes import run_outbox
from peers.smtp_peer import SmtpPeer


def configure_smtp(env: dict[str, str], peer: SmtpPeer, username: str, password: str) -> None:
    """`outbox settings set smtp` for ``peer`` with STARTTLS and AUTH (password on stdin)."""
    result = run_outbox(
        env,
        "settings",
        "set",
        "smtp",
        "--server",
        peer.host,
        "--port",
        str(peer.port),
        "--from-mailbox",
        "robot@example.com",
        "--username",
        username,
        "--password-stdin",
        "--tls",
        "starttls",
        stdin=password + "\n",
    )
    assert result.returncode == 0, result.stderr
