"""HTTP statuses for outbox's errors, in one table; every error answers ``{"detail", "field"}``.

The same table describes them in the OpenAPI document (``answers``), so that what a route
declares is what it answers: a client generated from ``/openapi.json`` knows every status and
the one body shape of them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from config.errors import (
    ConflictError,
    DeliveryError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    OutboxError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RedisUnavailableError,
    ServiceError,
    TooFewReplicasError,
)
from config.redis_location import RedisLocation
from tasks.message_input import field_path

__all__ = [
    "ErrorBody",
    "answers",
    "error_body",
    "error_response",
    "field_of",
    "install_error_handlers",
    "status_for",
]

# First match wins. Every error of outbox is an OutboxError (see config.errors).
_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInputError, 422),
    (NotAuthenticatedError, 401),
    (RateLimitedError, 429),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (DeliveryError, 502),  # the mail server or Graph failed us
    (ServiceError, 503),
    (OutboxError, 500),
)


class FieldProblem(BaseModel):
    field: str | None
    detail: str


class ErrorBody(BaseModel):
    """What every error answers."""

    detail: str
    field: str | None = None  # the field to change, as the caller spelled it: "to[1]"
    errors: list[FieldProblem] | None = None  # every problem of a refused body (422, 400)


_MEANINGS = {
    400: "The body is not JSON.",
    401: "No valid API key (`Authorization: Bearer KEY`) or page session.",
    403: "The key's role does not allow this, or a page session sent no CSRF token.",
    404: "Nothing of that name or id (another producer's delivery included).",
    409: "Not possible in the current state.",
    413: "The body is over OUTBOX_MAX_REQUEST_BYTES (a batch: OUTBOX_MAX_BATCH_REQUEST_BYTES).",
    422: "A value is refused; `field` names it.",
    429: "Over the key's own limit; nothing was stored. Try again after `Retry-After`.",
    502: "The mail server or Microsoft Graph failed.",
    503: "Redis (the records and the queue) is unreachable, knows no primary (a Sentinel "
    "failover), or has fewer replicas than OUTBOX_REDIS_MIN_REPLICAS. Try again after "
    "`Retry-After`.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {
        "Retry-After": {
            "schema": {"type": "integer"},
            "description": "Seconds until the key may send again.",
        }
    },
    503: {
        "Retry-After": {
            "schema": {"type": "integer"},
            "description": "Seconds worth waiting before trying again.",
        }
    },
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for outbox's errors of these statuses."""
    return {
        status: {
            "model": ErrorBody,
            "description": _MEANINGS[status],
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }


def status_for(error: BaseException) -> int | None:
    for kind, status in _STATUSES:
        if isinstance(error, kind):
            return status
    return None


def error_body(detail: str, field: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "field": field}


def field_of(location: Sequence[int | str]) -> str:
    """``to[1]``, ``attachments[0].name``: a pydantic location as the field's name.

    The request part (``body``, ``query``) and a union's tag (``smtp``, ``oauth``) are left
    out: they are not fields the caller wrote.
    """
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts and parts[0] in ("smtp", "oauth"):
        parts = parts[1:]
    return field_path(parts)


def error_response(error: Exception, location: RedisLocation) -> JSONResponse:
    """The answer to one of outbox's errors, or to a failure of Redis or of the broker
    (translated into ours: it names where Redis is)."""
    if isinstance(error, redis.RedisError | OperationalError):
        error = location.unavailable(error)
    if not isinstance(error, OutboxError):
        raise error
    status = status_for(error) or 500
    detail = str(error)
    field = error.field if isinstance(error, InvalidInputError) else None
    if field is not None:
        detail = detail.removeprefix(f"{field}: ")
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, RateLimitedError | RedisUnavailableError | TooFewReplicasError):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(error_body(detail, field), status_code=status, headers=headers)


async def _outbox_error(request: Request, error: Exception) -> JSONResponse:
    return error_response(error, request.app.state.services.context.redis_location)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        (field_of(problem["loc"]), str(problem["msg"]).removeprefix("Value error, "))
        for problem in error.errors()
    ]
    detail = "; ".join(f"{field}: {message}" if field else message for field, message in problems)
    # "field" names the first problem; "errors" lists every one, for a form to mark them all.
    body = {
        **error_body(detail, problems[0][0] or None),
        "errors": [{"field": field or None, "detail": message} for field, message in problems],
    }
    # A body that is not JSON at all is a malformed request, not a field's wrong value.
    malformed = any(problem["type"] == "json_invalid" for problem in error.errors())
    return JSONResponse(body, status_code=400 if malformed else 422)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own answers (404 of an unknown path, 405) in outbox's error body. A 405's
    ``Allow`` lists what every route of that path accepts, not only the first one's."""
    assert isinstance(error, StarletteHTTPException)
    headers = dict(error.headers or {})
    if error.status_code == 405:
        allowed = {
            method
            for route in request.app.routes
            if isinstance(route, BaseRoute) and route.matches(request.scope)[0] is not Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
        headers["Allow"] = ", ".join(sorted(allowed))
    if error.status_code in (204, 304):
        return Response(status_code=error.status_code, headers=headers)
    return JSONResponse(
        error_body(str(error.detail)), status_code=error.status_code, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OutboxError, _outbox_error)
    for kind in (redis.RedisError, OperationalError):
        app.add_exception_handler(kind, _outbox_error)
