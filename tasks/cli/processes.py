"""The long-running processes: ``outbox worker``, ``outbox flower`` and ``outbox api``."""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from config.api_keys import ApiKeyStore, Role
from config.errors import KeyNameTakenError
from tasks.cli.common import load_context
from tasks.queues import QUEUES

__all__ = ["CELERY_APP", "processes_app"]

BOOTSTRAP_KEY_NAME = "admin"
LOOPBACK = "127.0.0.1"

CELERY_APP = "tasks.worker_app"
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

# Registered on the top-level `outbox` command: `outbox worker`, `outbox flower`.
processes_app = typer.Typer()


@processes_app.command(context_settings=_PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    load_context()  # fail early with a clear message on a bad environment
    # Every priority's queue, high first: the worker takes from them in this order.
    queues = ",".join(QUEUES.values())
    _exec_celery(["worker", "--loglevel", "INFO", "--queues", queues, "--events", *ctx.args])


@processes_app.command(context_settings=_PASSTHROUGH)
def flower(ctx: typer.Context) -> None:
    """Run Flower on the outbox broker, on loopback unless given --address (extra arguments go
    to `celery flower`)."""
    load_context()
    _exec_celery(["flower", *_on_loopback_by_default(ctx.args)])


def _on_loopback_by_default(arguments: list[str]) -> list[str]:
    # Flower listens on every interface by default, and without authentication unless it is
    # configured: as `outbox api`, stay on loopback unless an address is asked for.
    if "FLOWER_ADDRESS" in os.environ or any(arg.startswith("--address") for arg in arguments):
        return arguments
    return [f"--address={LOOPBACK}", *arguments]


def _exec_celery(arguments: list[str]) -> NoReturn:
    # exec: the worker gets the signals (Ctrl-C, SIGTERM from a supervisor) directly.
    command = [sys.executable, "-m", "celery", "--app", CELERY_APP, *arguments]
    os.execv(sys.executable, command)  # noqa: S606


# What `outbox api` hands uvicorn: an import string, not the app, so that the command (in
# tasks/, a layer below api/) never imports it, and uvicorn can build one app per process.
API_APP = "api.app:app_from_environment"


@processes_app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API and the Mail Settings page (uvicorn)."""
    import uvicorn

    context = load_context()  # the environment's errors, said here before uvicorn starts
    _print_first_admin_key(ApiKeyStore(context.redis), f"http://{host}:{port}/")
    trusted = context.settings.forwarded_allow_ips
    uvicorn.run(
        API_APP,
        factory=True,
        host=host,
        port=port,
        log_level="info",
        # X-Forwarded-Proto and -For are believed only from OUTBOX_FORWARDED_ALLOW_IPS: left
        # to itself uvicorn believes loopback (or $FORWARDED_ALLOW_IPS), so a local user
        # could claim any client address.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )


def _print_first_admin_key(keys: ApiKeyStore, url: str) -> None:
    """Without any admin key nobody could sign in: create one and show it this once, with
    where to use it (as Jupyter prints its token)."""
    if keys.any_with_role(Role.ADMIN):
        return
    try:
        key = keys.create(BOOTSTRAP_KEY_NAME, Role.ADMIN)
    except KeyNameTakenError:
        return  # another process created it a moment ago and printed it
    typer.echo(
        "\n"
        "  No admin key existed, so outbox created one (it is shown only this once):\n"
        f"      {key}\n"
        f"  Sign in with it at {url} to configure mail.\n"
        "  More keys: `outbox keys create --role admin|producer --name NAME`.\n",
        err=True,
    )
