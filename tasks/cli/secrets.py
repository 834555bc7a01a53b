"""``outbox secrets``: re-encrypt the stored secrets after a new key was put first."""

from __future__ import annotations

import typer

from tasks.cli.common import load_context

__all__ = ["secrets_app"]

secrets_app = typer.Typer(
    help="Secrets at rest (the mail password or client secret).", no_args_is_help=True
)


@secrets_app.command("rotate")
def rotate() -> None:
    """Encrypt every stored secret again with the first key of OUTBOX_SECRET_KEY.

    To rotate: set OUTBOX_SECRET_KEY=NEW,OLD for every process, run this, then drop OLD.
    """
    if load_context().settings_store.rotate_secret():
        typer.echo("re-encrypted 1 stored secret with the first key of OUTBOX_SECRET_KEY")
    else:
        typer.echo("no stored secret to re-encrypt")
