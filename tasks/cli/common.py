"""What every command group shares: the process context, the producer, shared options."""

from __future__ import annotations

from typing import Annotated

import typer

from tasks.context import OutboxContext
from tasks.producer import Producer

__all__ = ["JsonFlag", "load_context", "producer_for"]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def load_context() -> OutboxContext:
    """The process context; a malformed environment or secret key is reported here, before
    the command does anything."""
    context = OutboxContext.from_environment()
    _ = context.secret_box
    return context


def producer_for(context: OutboxContext) -> Producer:
    # Celery is imported only by the commands that publish.
    from tasks.celery_app import celery_publisher, create_celery_app

    return Producer(
        context.deliveries,
        celery_publisher(create_celery_app(context)),
        message_id_domain=context.settings.message_id_domain,
        max_message_bytes=context.settings.max_message_bytes,
    )
