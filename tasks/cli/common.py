"""What every command group shares: the process context, the producer, shared options."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from tasks.context import OutboxContext
from tasks.producer import Producer

__all__ = ["JsonFlag", "load_context", "local_time", "producer_for"]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def load_context() -> OutboxContext:
    """The process context; a malformed environment or secret key is reported here, before
    the command does anything."""
    context = OutboxContext.from_environment()
    _ = context.secret_box
    return context


def producer_for(context: OutboxContext) -> Producer:
    # Celery and the worker runtime are imported only by the commands that publish.
    from tasks.celery_app import producer_for as celery_producer

    return celery_producer(context)


def local_time(timestamp: float) -> str:
    """A unix time as operators read it: local, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
