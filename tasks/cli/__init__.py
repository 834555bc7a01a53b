"""The ``outbox`` command line: settings, keys, send, status, list, retry, purge, and the
processes: worker, flower, api.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or invalid input
(``tasks.cli.errors`` maps every error to one of them).
"""

from __future__ import annotations

import logging
import sys

import typer

from tasks.cli.deliveries import deliveries_app
from tasks.cli.errors import exit_code, report
from tasks.cli.keys import keys_app
from tasks.cli.processes import processes_app
from tasks.cli.settings import settings_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="outbox: reliable background e-mail delivery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(deliveries_app)  # nameless: its commands sit on `outbox` itself
app.add_typer(processes_app)
app.add_typer(settings_app, name="settings")
app.add_typer(keys_app, name="keys")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        app()
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise  # a bug: the traceback is what a report needs
        # Input or infrastructure, not a bug: one clear line instead of a traceback.
        typer.echo(report(exc), err=True)
        sys.exit(code)
