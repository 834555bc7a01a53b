"""HTTP statuses for outbox's errors, in one table; every error answers ``{"detail", "field"}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError

from tasks.message_input import field_path
from worker.errors import (
    ConflictError,
    DeliveryError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    OutboxError,
    PermissionDeniedError,
    ServiceError,
)

__all__ = ["error_body", "field_of", "install_error_handlers", "status_for"]

# First match wins. Every error of outbox is an OutboxError (see worker.errors).
_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInputError, 422),
    (NotAuthenticatedError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (DeliveryError, 502),  # the mail server or Graph failed us
    (ServiceError, 503),
    (OutboxError, 500),
)


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


async def _redis_error(request: Request, error: Exception) -> JSONResponse:
    """A failure of Redis or of the broker, translated into ours: it names where Redis is."""
    location = request.app.state.services.context.redis_location
    return await _outbox_error(request, location.unavailable(error))


async def _outbox_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OutboxError)
    status = status_for(error) or 500
    detail = str(error)
    field = error.field if isinstance(error, InvalidInputError) else None
    if field is not None:
        detail = detail.removeprefix(f"{field}: ")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(detail, field), status_code=status, headers=headers)


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
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OutboxError, _outbox_error)
    for kind in (redis.RedisError, OperationalError):
        app.add_exception_handler(kind, _redis_error)
