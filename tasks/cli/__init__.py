"""The ``outbox`` command line: settings, keys, secrets, schedules, webhooks, send, report,
status, list, retry, purge, and the processes: worker, flower, api.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or invalid input
(``tasks.cli.errors`` maps every error to one of them).
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import redis
import typer
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from config.errors import OutboxError
from config.process import ProcessSettings
from config.redis_location import RedisLocation, configured_location
from tasks.cli.deliveries import deliveries_app
from tasks.cli.errors import exit_code
from tasks.cli.keys import keys_app
from tasks.cli.processes import processes_app
from tasks.cli.reports import report_app
from tasks.cli.schedules import schedules_app
from tasks.cli.secrets import secrets_app
from tasks.cli.settings import settings_app
from tasks.cli.webhooks import webhooks_app

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
app.add_typer(secrets_app, name="secrets")
app.add_typer(schedules_app, name="schedules")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(report_app)  # nameless: `outbox report`


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        app()
    except (redis.RedisError, OperationalError) as exc:
        _exit_with(_redis_location().unavailable(exc))
    except OutboxError as exc:
        _exit_with(exc)
    # Anything else is a bug: its traceback is what a report needs.


def _exit_with(error: OutboxError) -> NoReturn:
    # Input or infrastructure, not a bug: one clear line instead of a traceback.
    typer.echo(f"error: {error}", err=True)
    sys.exit(exit_code(error))


def _redis_location() -> RedisLocation:
    try:
        settings = ProcessSettings()
    except ValidationError:
        return RedisLocation("redis://localhost:6379/0")
    return configured_location(
        settings.redis_url,
        settings.data_dir,
        sentinel_password=settings.sentinel_password_text,
    )
