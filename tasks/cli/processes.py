"""The long-running processes: ``outbox worker`` and ``outbox flower``, run through Celery."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer

from tasks.cli.common import load_context

__all__ = ["CELERY_APP", "processes_app"]

CELERY_APP = "tasks.worker_app"
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

# Registered on the top-level `outbox` command: `outbox worker`, `outbox flower`.
processes_app = typer.Typer()


@processes_app.command(context_settings=_PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    load_context()  # fail early with a clear message on a bad environment
    _exec_celery(["worker", "--loglevel", "INFO", "--queues", "outbox", "--events", *ctx.args])


@processes_app.command(context_settings=_PASSTHROUGH)
def flower(ctx: typer.Context) -> None:
    """Run Flower on the outbox broker (extra arguments go to `celery flower`)."""
    load_context()
    _exec_celery(["flower", *ctx.args])


def _exec_celery(arguments: list[str]) -> NoReturn:
    # exec: the worker gets the signals (Ctrl-C, SIGTERM from a supervisor) directly.
    command = [sys.executable, "-m", "celery", "--app", CELERY_APP, *arguments]
    os.execv(sys.executable, command)  # noqa: S606
