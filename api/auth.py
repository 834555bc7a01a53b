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
from starlette.concurrency import run_in_threadpool

from api.services import ApiServices, services
from config.api_keys import ApiKey, LookedUp, Role
from config.errors import NotAuthenticatedError, PermissionDeniedError
from config.sessions import Session

__all__ = [
    "AUTHENTICATED",
    "BEARER_SCHEME",
    "CSRF_HEADER",
    "ENQUEUE_PATH",
    "LOOKED_UP",
    "SESSION_COOKIE",
    "Admin",
    "Caller",
    "admin",
    "authenticate",
    "bearer_key",
    "caller",
    "csrf_matches",
    "guarded_caller",
    "looked_up",
    "page_session",
]

SESSION_COOKIE = "outbox_session"
# Where the request guard leaves the key it authenticated (``request.state``).
AUTHENTICATED = "api_key"
# ... and, for a bearer key, the lookup record that vouched for it (``LookedUp``).
LOOKED_UP = "api_key_lookup"
# The one route that takes a key remembered for up to a second (``AsyncKeyLookup``): its
# write checks the key's record again, in the same script (``api.emails_routes``).
ENQUEUE_PATH = "/api/emails"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="An API key: `outbox keys create`.")
BEARER_SCHEME = _bearer.scheme_name  # its name in the OpenAPI description


def page_session(request: Request, found: ApiServices) -> tuple[Session, ApiKey] | None:
    """The signed-in session of the cookie, while the very key that signed in is still an
    admin key (a key created again under its name is another key); using it extends it."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    session = found.sessions.get(token)
    if session is None:
        return None
    key = found.keys.holder(session.key_name)
    if key is None or key.role is not Role.ADMIN or key.key_hash != session.key_hash:
        return None
    found.sessions.touch(token, session)
    return session, key


def csrf_matches(sent: str, session: Session) -> bool:
    """Whether ``sent`` is the session's CSRF token; any other text, non-ASCII included, is
    simply wrong (``compare_digest`` raises on non-ASCII text, so compare bytes)."""
    return secrets.compare_digest(sent.encode(), session.csrf_token.encode())


async def authenticate(request: Request, found: ApiServices) -> ApiKey:
    """The key behind the request (its bearer key, or the session of its cookie with the
    CSRF token for a change), or ``NotAuthenticatedError`` / ``PermissionDeniedError``; a
    bearer key's lookup is left in ``request.state`` (``LOOKED_UP``).

    Reads headers and cookies only: ``api.request_guard`` calls it before any body is read.
    """
    credentials = bearer_key(request)
    if credentials:
        remembered = request.method == "POST" and request.scope["path"] == ENQUEUE_PATH
        looked_up = await found.on_loop().keys.authenticate(credentials, remembered=remembered)
        if looked_up is None:
            raise NotAuthenticatedError("the API key is not valid (unknown or revoked)")
        setattr(request.state, LOOKED_UP, looked_up)
        return looked_up.key
    # A page session: its store is synchronous, and pages are few.
    return await run_in_threadpool(_session_key, request, found)


def bearer_key(request: Request) -> str:
    """The key of an ``Authorization: Bearer KEY`` header ("" without one)."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _session_key(request: Request, found: ApiServices) -> ApiKey:
    signed_in = page_session(request, found)
    if signed_in is None:
        raise NotAuthenticatedError(
            "send an API key as 'Authorization: Bearer KEY', or sign in on the page"
        )
    session, key = signed_in
    changes_something = request.method not in _SAFE_METHODS
    if changes_something and not csrf_matches(request.headers.get(CSRF_HEADER, ""), session):
        raise PermissionDeniedError(f"missing or wrong {CSRF_HEADER} header")
    return key


def looked_up(request: Request) -> LookedUp | None:
    """The bearer key's lookup that authenticated ``request`` (None for a page session)."""
    found: LookedUp | None = getattr(request.state, LOOKED_UP, None)
    return found


async def caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    found: Annotated[ApiServices, Depends(services)],
) -> ApiKey:
    """FastAPI dependency: the key behind the request, or 401 (the bearer parameter is
    there for the OpenAPI description; the key is read in ``authenticate``)."""
    return await guarded_caller(request, found)


async def guarded_caller(request: Request, found: ApiServices) -> ApiKey:
    """``caller`` for a route that takes no dependencies: the key the request guard found."""
    key: ApiKey | None = getattr(request.state, AUTHENTICATED, None)
    return key if key is not None else await authenticate(request, found)


async def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    """FastAPI dependency: an administrator's key, or 403."""
    if key.role is not Role.ADMIN:
        raise PermissionDeniedError(f"the key {key.name!r} is a {key.role} key; this needs admin")
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]
