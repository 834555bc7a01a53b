"""The administrators' pages: sign in and out, Mail Settings, Deliveries, Webhooks
(server-rendered)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.auth import CSRF_HEADER, SESSION_COOKIE, csrf_matches, page_session
from api.services import ApiServices, services
from api.settings_fields import SETTINGS_FORM, STORED_PLACEHOLDER
from config.api_keys import Role

__all__ = ["TEMPLATES", "router"]

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)

Services = Annotated[ApiServices, Depends(services)]


def _local_path(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/settings/mail"


def _page(request: Request, found: ApiServices, template: str, **extra: Any) -> Response:
    signed_in = page_session(request, found)
    if signed_in is None:
        return _signin_page(request, next_path=request.url.path)
    session, key = signed_in
    context = {"csrf_token": session.csrf_token, "key_name": key.name, **extra}
    return TEMPLATES.TemplateResponse(request, template, context)


def _signin_page(
    request: Request, *, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        "signin.html",
        {"next_path": _local_path(next_path), "error": error},
        status_code=status_code,
    )


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/settings/mail", status_code=303)


@router.get("/settings/mail", response_class=HTMLResponse)
def mail_settings_page(request: Request, found: Services) -> Response:
    return _page(
        request,
        found,
        "settings.html",
        active="settings",
        settings_form=SETTINGS_FORM,
        stored_placeholder=STORED_PLACEHOLDER,
    )


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(request: Request, found: Services) -> Response:
    return _page(request, found, "deliveries.html", active="deliveries")


@router.get("/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request, found: Services) -> Response:
    return _page(request, found, "webhooks.html", active="webhooks")


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str | None = None) -> Response:
    return _signin_page(request, next_path=next or "/settings/mail")


@router.post("/signin")
def sign_in(
    request: Request,
    found: Services,
    key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/settings/mail",
) -> Response:
    """Exchange an admin key for a session cookie; the key itself is never stored in it."""
    owner = found.keys.authenticate(key.strip())
    if owner is None:
        return _signin_page(
            request, next_path=next, error="That key is not valid.", status_code=401
        )
    if owner.role is not Role.ADMIN:
        return _signin_page(
            request,
            next_path=next,
            error=f"The key {owner.name!r} is a producer key; only an admin key can sign in.",
            status_code=403,
        )
    token, session = found.sessions.create(owner.name, owner.key_hash)
    response = RedirectResponse(_local_path(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=found.sessions.cookie_max_age(session),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/signout")
def sign_out(
    request: Request,
    found: Services,
    csrf_token: Annotated[str | None, Form()] = None,
) -> Response:
    """End the session (the form carries the CSRF token, as every change does)."""
    signed_in = page_session(request, found)
    sent = csrf_token or request.headers.get(CSRF_HEADER, "")
    if signed_in is not None and csrf_matches(sent, signed_in[0]):
        found.sessions.delete(request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
