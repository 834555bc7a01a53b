"""The long-running processes: ``outbox worker``, ``outbox flower`` and ``outbox api``."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, NoReturn

import typer

from config.api_keys import ApiKeyStore, Role
from config.errors import KeyNameTakenError
from tasks.cli.common import load_context
from tasks.queues import QUEUES

__all__ = ["CELERY_APP", "default_workers", "processes_app", "run_uvicorn", "uvicorn_options"]

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


def default_workers() -> int:
    """``outbox api``'s processes unless told: one per core, as ``outbox worker``'s."""
    return os.cpu_count() or 1


def uvicorn_options(
    host: str, port: int, workers: int, forwarded_allow_ips: str = ""
) -> dict[str, Any]:
    """How ``outbox api`` runs uvicorn (also the benchmark's framework baseline)."""
    return {
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": "info",
        # X-Forwarded-Proto and -For are believed only from OUTBOX_FORWARDED_ALLOW_IPS: left
        # to itself uvicorn believes loopback (or $FORWARDED_ALLOW_IPS), so a local user
        # could claim any client address.
        "proxy_headers": bool(forwarded_allow_ips),
        "forwarded_allow_ips": forwarded_allow_ips,
    }


@processes_app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Server processes, sharing the port. [default: one per core]"),
    ] = None,
) -> None:
    """Serve the HTTP API and the Mail Settings page (uvicorn)."""
    context = load_context()  # the environment's errors, said here before uvicorn starts
    _print_first_admin_key(ApiKeyStore(context.redis), f"http://{host}:{port}/")
    options = uvicorn_options(
        host, port, workers or default_workers(), context.settings.forwarded_allow_ips
    )
    # An import string, so that with several workers each process builds its own app.
    run_uvicorn(API_APP, options)


def run_uvicorn(factory: str, options: dict[str, Any]) -> None:
    """``uvicorn.run(factory, factory=True, **options)``; with several workers, the port
    listens from the start, so that a client that connects as soon as "Uvicorn running on"
    is printed waits for the first process instead of being refused (uvicorn's parent
    process only binds it, and each process listens once its app is built)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if options.get("workers", 1) <= 1:
        uvicorn.run(factory, factory=True, **options)
        return
    config = uvicorn.Config(factory, factory=True, **options)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


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
