"""What the API's routes use, built once per process from the OutboxContext."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from fastapi import Request

from api.key_limits import KeyQuota
from config.api_keys import ApiKeyStore
from config.sessions import SessionStore
from tasks.celery_app import create_celery_app, producer_for
from tasks.context import OutboxContext
from tasks.producer import Producer
from tasks.reports.service import ReportService, report_service

__all__ = ["ApiServices", "services"]


@dataclass(frozen=True)
class ApiServices:
    context: OutboxContext

    @cached_property
    def keys(self) -> ApiKeyStore:
        return ApiKeyStore(self.context.redis)

    @cached_property
    def sessions(self) -> SessionStore:
        return SessionStore(
            self.context.redis,
            idle_seconds=self.context.settings.session_idle_seconds,
            lifetime_seconds=self.context.settings.session_lifetime_seconds,
        )

    @cached_property
    def key_quota(self) -> KeyQuota:
        return KeyQuota(self.context.redis)

    @cached_property
    def celery(self) -> Celery:
        return create_celery_app(self.context)

    @cached_property
    def producer(self) -> Producer:
        return producer_for(self.context, self.celery)

    @cached_property
    def reports(self) -> ReportService:
        return report_service(self.context, self.producer)


def services(request: Request) -> ApiServices:
    """FastAPI dependency: the services of the app that serves ``request``."""
    found: ApiServices = request.app.state.services
    return found
