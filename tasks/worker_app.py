"""The Celery app built from the environment: what `celery --app tasks.worker_app` loads."""

from __future__ import annotations

from tasks.celery_app import create_celery_app
from tasks.context import OutboxContext

__all__ = ["app"]

app = create_celery_app(OutboxContext.from_environment())
