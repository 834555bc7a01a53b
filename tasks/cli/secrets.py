"""``outbox secrets``: re-encrypt the stored secrets after a new key was put first."""

from __future__ import annotations

import typer

from tasks.cli.common import load_context
from tasks.cli.webhooks import endpoint_store

__all__ = ["secrets_app"]

secrets_app = typer.Typer(
    help="Secrets at rest (the mail password or client secret, webhook signing secrets).",
    no_args_is_help=True,
)


@secrets_app.command("rotate")
def rotate() -> None:
    """Encrypt every stored secret again with the first key of OUTBOX_SECRET_KEY.

    To rotate: set OUTBOX_SECRET_KEY=NEW,OLD for every process, run this, then drop OLD.
    """
    context = load_context()
    count = int(context.settings_store.rotate_secret()) + endpoint_store(context).rotate_secrets()
    if count:
        plural = "" if count == 1 else "s"
        typer.echo(
            f"re-encrypted {count} stored secret{plural} with the first key of OUTBOX_SECRET_KEY"
        )
    else:
        typer.echo("no stored secret to re-encrypt")
