"""The FastAPI application: the JSON API, the pages, and what protects them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from api import (
    emails_routes,
    health_routes,
    keys_routes,
    message_routes,
    pages,
    schedules_routes,
    settings_routes,
    webhooks_routes,
)
from api.auth import authenticate
from api.errors import error_response, install_error_handlers
from api.request_guard import BodyLimit, RequestGuard
from api.services import ApiServices
from tasks.context import OutboxContext

__all__ = ["app_from_environment", "create_app"]

# Pages load scripts and styles from this site only, and no other site may frame them.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(context: OutboxContext) -> FastAPI:
    app = FastAPI(
        title="outbox",
        summary="Reliable background e-mail delivery over SMTP and Microsoft Graph.",
        description=(
            "Producers enqueue e-mails with a producer key; administrators also read and "
            "change the mail settings. Send the key as `Authorization: Bearer KEY`."
        ),
    )
    found = app.state.services = ApiServices(context)
    install_error_handlers(app)
    body_limit = BodyLimit(context.settings.request_bytes_limit, "OUTBOX_MAX_REQUEST_BYTES")
    batch_limit = BodyLimit(
        context.settings.batch_request_bytes_limit, "OUTBOX_MAX_BATCH_REQUEST_BYTES"
    )
    app.add_middleware(
        RequestGuard,
        limit_for=lambda path: batch_limit if path == "/api/emails/batch" else body_limit,
        authenticate=lambda request: authenticate(request, found),
        error_response=lambda error: error_response(error, context.redis_location),
    )
    app.include_router(settings_routes.router)
    app.include_router(message_routes.router)  # /api/emails/{id}/message: captured e-mails
    app.include_router(emails_routes.router)
    app.include_router(schedules_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(webhooks_routes.router)
    app.include_router(health_routes.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        # FastAPI's /docs and /redoc load their viewers from a CDN with an inline script;
        # everything else outbox serves is its own.
        if request.url.path not in (app.docs_url, app.redoc_url):
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        # Nothing outbox answers may be kept by a shared cache: it is per key and live.
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def app_from_environment() -> FastAPI:
    """The app of the process's environment (OUTBOX_*): uvicorn's factory."""
    return create_app(OutboxContext.from_environment())
