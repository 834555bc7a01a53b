"""The FastAPI application: the JSON API, the pages, and what protects them."""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SecurityHeaders:
    """ASGI middleware: the security headers on every answer (but FastAPI's /docs and
    /redoc, which load their viewers from a CDN with an inline script; everything else
    outbox serves is its own), and no-store: nothing outbox answers may be kept by a shared
    cache, it is per key and live. Plain ASGI: Starlette's ``BaseHTTPMiddleware`` costs a
    task and a memory stream per request."""

    def __init__(self, app: ASGIApp, *, bare_paths: frozenset[str | None]) -> None:
        self._app = app
        self._bare_paths = bare_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        secured = scope["path"] not in self._bare_paths

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if secured:
                    for name, value in _SECURITY_HEADERS.items():
                        headers.setdefault(name, value)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self._app(scope, receive, send_with_headers)


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
    # The enqueue's router first: the router tries each route in turn, and it is the one
    # route called once per e-mail. (No path of one of these routers is another's.)
    app.include_router(emails_routes.router)
    app.include_router(settings_routes.router)
    app.include_router(message_routes.router)  # /api/emails/{id}/message: captured e-mails
    app.include_router(schedules_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(webhooks_routes.router)
    app.include_router(health_routes.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    # Outermost (added last), as the "http" middleware it replaces was: it also dresses
    # the guard's 401 and 413 answers.
    app.add_middleware(SecurityHeaders, bare_paths=frozenset({app.docs_url, app.redoc_url}))
    return app


def app_from_environment() -> FastAPI:
    """The app of the process's environment (OUTBOX_*): uvicorn's factory.

    What the process built until now (modules, the app) lives as long as it does: frozen out
    of the garbage collector's reach, so that its full collections, every few thousand
    requests, do not walk a hundred thousand objects while requests wait."""
    app = create_app(OutboxContext.from_environment())
    gc.freeze()
    return app
