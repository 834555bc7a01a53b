"""Who is calling: an API key (``Authorization: Bearer``) or the page's signed-in session.

Sessions are for administrators only and ride on a cookie, so a request that changes
something must also carry the session's CSRF token in ``X-CSRF-Token`` (SameSite=Strict
already keeps the cookie off cross-site requests; the token is the second lock).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.services import ApiServices, services
from api.sessions import Session
from config.api_keys import ApiKey, Role
from worker.errors import NotAuthenticatedError, PermissionDeniedError

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Admin",
    "Caller",
    "admin",
    "caller",
    "page_session",
]

SESSION_COOKIE = "outbox_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="An API key: `outbox keys create`.")


def page_session(request: Request, found: ApiServices) -> tuple[Session, ApiKey] | None:
    """The signed-in session of the cookie, while its admin key is still valid."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    session = found.sessions.get(token)
    if session is None or found.keys.role_of(session.key_name) is not Role.ADMIN:
        return None
    return session, ApiKey(session.key_name, Role.ADMIN)


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    found: Annotated[ApiServices, Depends(services)],
) -> ApiKey:
    """FastAPI dependency: the key behind the request, or 401."""
    if credentials is not None:
        key = found.keys.authenticate(credentials.credentials)
        if key is None:
            raise NotAuthenticatedError("the API key is not valid (unknown or revoked)")
        return key
    signed_in = page_session(request, found)
    if signed_in is None:
        raise NotAuthenticatedError(
            "send an API key as 'Authorization: Bearer KEY', or sign in on the page"
        )
    session, key = signed_in
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent, session.csrf_token):
            raise PermissionDeniedError(f"missing or wrong {CSRF_HEADER} header")
    return key


def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    """FastAPI dependency: an administrator's key, or 403."""
    if key.role is not Role.ADMIN:
        raise PermissionDeniedError(f"the key {key.name!r} is a {key.role} key; this needs admin")
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]
