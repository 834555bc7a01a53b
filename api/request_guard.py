"""What every request with a body passes before any of it is read: a size limit, and for the
API, the caller's key.

FastAPI reads and parses a route's body before it runs the route's dependencies, so without
this a POST of any size from anyone would be buffered and parsed, then answered 401. Here a
body whose ``Content-Length`` is over the limit is answered 413 at once; one sent without a
length (chunked) is read only up to the limit. An API request is authenticated from its
headers and cookies first (``api.auth.authenticate``); the route's dependency then takes the
key from ``request.state`` instead of asking Redis again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AUTHENTICATED
from config.api_keys import ApiKey
from config.errors import OutboxError, PayloadTooLargeError

__all__ = ["BodyLimit", "RequestGuard"]

_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class BodyLimit:
    bytes: int
    setting: str  # the OUTBOX_* variable that sets it, for the 413's text


class RequestGuard:
    """ASGI middleware: refuse over-limit bodies with 413, unauthenticated API calls with 401,
    before the application reads a byte of the body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], BodyLimit],
        authenticate: Callable[[Request], Awaitable[ApiKey]],
        error_response: Callable[[Exception], Response],
    ) -> None:
        self._app = app
        self._limit_for = limit_for
        self._authenticate = authenticate
        self._error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODILESS:
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self._limit_for(path)
        request = Request(scope)
        try:
            _check_declared_length(request, limit)
            if path.startswith("/api/"):
                key = await self._authenticate(request)
                scope.setdefault("state", {})[AUTHENTICATED] = key
            if "content-length" not in request.headers:
                receive = await _read_at_most(receive, limit)
        except Exception as error:
            await self._error_response(error)(scope, receive, send)
            return
        await self._app(scope, receive, send)


def _check_declared_length(request: Request, limit: BodyLimit) -> None:
    # The server (h11, httptools) has already refused a Content-Length that is not a number.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit.bytes:
        raise _too_large(limit)


async def _read_at_most(receive: Receive, limit: BodyLimit) -> Receive:
    """Read a body of unknown length, refusing it as soon as it passes ``limit``; the
    application then receives what was read, as one message."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit.bytes:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    replayed: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

    async def replay() -> Message:
        return replayed.pop() if replayed else await receive()

    return replay


def _too_large(limit: BodyLimit) -> OutboxError:
    return PayloadTooLargeError(
        f"the request body is over the limit of {limit.bytes} bytes ({limit.setting})"
    )
