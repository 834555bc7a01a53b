"""``/api/emails``: enqueue e-mails (one or a batch), read their status, cancel them, retry
failed ones."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import (
    BEARER_SCHEME,
    Admin,
    Caller,
    authenticate,
    bearer_key,
    guarded_caller,
    looked_up,
)
from api.errors import answers, error_body, field_of
from api.key_limits import new_deliveries, refuse_other_domains
from api.services import ApiServices, services
from config.api_keys import LAST_USED_HASH, ApiKey, Role
from config.errors import (
    DeliveryNotFoundError,
    InvalidInputError,
    NotAuthenticatedError,
    NotCancellableError,
)
from tasks.message_input import MessageInput
from tasks.producer import cancel_summary
from worker.records import (
    ALL_OWNERS,
    Created,
    DeliveryRecord,
    DeliveryStatus,
    record_summary,
)
from worker.records.enqueue import Enqueued, Guard, Touch

__all__ = ["MAX_BATCH", "router"]

MAX_BATCH = 1000  # messages per batch request

router = APIRouter(prefix="/api/emails", tags=["e-mails"], responses=answers(401, 503))
# A body may be malformed, too large or refused by field; a page session must send its CSRF
# token with it.
WITH_BODY = answers(400, 403, 413, 422)

Services = Annotated[ApiServices, Depends(services)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="The same key gives back the same delivery instead of a second one.",
    ),
]


def _accepted(
    request: Request, created: Created, current: DeliveryStatus | None, message: MessageInput
) -> dict[str, Any]:
    scheduled = message.send_at_timestamp(time.time()) is not None
    fresh = DeliveryStatus.SCHEDULED if scheduled else DeliveryStatus.QUEUED
    return {
        "id": created.id,
        "status": (current or fresh).value,
        "created": created.created,
        "status_url": _status_url(request, created.id),
    }


def _status_url(request: Request, delivery_id: str) -> str:
    """``request.url_for("read_email", ...)``, without searching every route for it or
    building the request's base URL each time: what it depends on names the base."""
    scope = request.scope
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    server = scope.get("server")
    where = (scope.get("scheme"), host, tuple(server) if server else None, scope.get("root_path"))
    base = _BASES.get(where)
    if base is None:
        if len(_BASES) >= _MAX_BASES:
            _BASES.clear()
        base = _BASES[where] = str(request.base_url).rstrip("/") + router.prefix
    return f"{base}/{delivery_id}"


# Base URLs of status URLs by what makes them (scheme, Host header, server, root path).
_BASES: dict[tuple[object, ...], str] = {}
_MAX_BASES = 256


def _current(found: ApiServices, created: list[Created]) -> list[DeliveryStatus | None]:
    """Statuses of deliveries an idempotency key gave back (new ones are queued, or
    scheduled)."""
    repeated = [c.id for c in created if not c.created]
    statuses = dict(zip(repeated, found.context.deliveries.statuses(repeated), strict=True))
    return [statuses.get(c.id) for c in created]


def _owned(key: ApiKey) -> str | None:
    """Whose deliveries ``key`` may see: its own, or (None) everyone's for an admin."""
    return None if key.role is Role.ADMIN else key.name


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=dict[str, Any],
    responses={**WITH_BODY, **answers(429)},
    # The bearer key as ``Caller`` declares it, without its dependencies: FastAPI solves
    # each one on every request, and the request guard has already authenticated this one.
    openapi_extra={"security": [{BEARER_SCHEME: []}]},
)
async def send_email(
    message: MessageInput,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Enqueue one e-mail; answers at once with its id (the worker sends it)."""
    found: ApiServices = request.app.state.services
    key = await guarded_caller(request, found)
    if idempotency_key is not None:
        message = _with_idempotency_key(message, idempotency_key)
    # A key remembered from up to a second ago: what it refuses or what its record no
    # longer says is asked of Redis again, once.
    fresh = looked_up(request) is None  # a page session's key was read just now
    while True:
        try:
            refuse_other_domains(message, key.limits)
        except InvalidInputError:
            if fresh:
                raise
            key, fresh = await _looked_up_again(request, found), True
            continue
        found.producer.check_limits(message)  # a message refused anyway uses up no quota
        if _counted(key) or found.producer.confirms_replication:
            # The key's quota and the wait for replicas are the synchronous producer's.
            answer = await run_in_threadpool(_send_counted, message, request, key, found)
            return JSONResponse(answer, status.HTTP_202_ACCEPTED)
        enqueued = await _enqueue(message, request, key, found)
        if enqueued is not None:
            # Rendered here: FastAPI would validate the answer against its model first.
            answer = _accepted(request, enqueued.created, enqueued.status, message)
            return JSONResponse(answer, status.HTTP_202_ACCEPTED)
        if fresh:
            raise NotAuthenticatedError("the API key changed while the e-mail was being enqueued")
        # The key was revoked or changed since it was looked up.
        key, fresh = await _looked_up_again(request, found), True


async def _enqueue(
    message: MessageInput, request: Request, key: ApiKey, found: ApiServices
) -> Enqueued | None:
    """Store and queue the message in one round trip, while the key's record still says
    what it said when it was looked up (None, nothing stored, once it does not)."""
    lookup = looked_up(request)
    return await found.on_loop().enqueue.enqueue(
        message,
        created_by=key.name,
        guard=Guard(lookup.lookup_key, lookup.record) if lookup else None,
        touch=Touch(LAST_USED_HASH, key.name, repr(time.time())) if lookup else None,
    )


def _with_idempotency_key(message: MessageInput, idempotency_key: str) -> MessageInput:
    try:
        # dict(): the fields as they are, attachments not copied; validated again for the key.
        return MessageInput.model_validate({**dict(message), "idempotency_key": idempotency_key})
    except ValidationError as exc:
        problem = exc.errors(include_url=False, include_input=False)[0]
        message_text = str(problem["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(message_text, field="Idempotency-Key") from None


def _counted(key: ApiKey) -> bool:
    """Whether the key has a quota to count its e-mails against."""
    return bool(key.limits.max_per_minute or key.limits.max_per_day)


async def _looked_up_again(request: Request, found: ApiServices) -> ApiKey:
    """The request's key asked of Redis again, or 401 when it is gone."""
    lookup = looked_up(request)
    if lookup is not None:
        found.on_loop().keys.forget(lookup.key.key_hash)
    return await authenticate(request, found)


def _send_counted(
    message: MessageInput, request: Request, key: ApiKey, found: ApiServices
) -> dict[str, Any]:
    """The enqueue through the synchronous producer (in a worker thread)."""
    if looked_up(request) is not None:
        # The key may have been remembered for up to a second, and this write does not
        # check it again: ask Redis now, as before any other route.
        fresh = found.keys.authenticate(bearer_key(request))
        if fresh is None:
            raise NotAuthenticatedError("the API key is not valid (unknown or revoked)")
        if fresh != key:
            key = fresh
            refuse_other_domains(message, key.limits)
    found.key_quota.admit(key, new_deliveries(found.context.deliveries, key, [message]))
    created = found.producer.enqueue(message, created_by=key.name)
    return _accepted(request, created, _current(found, [created])[0], message)


@router.post("/batch", responses={**WITH_BODY, **answers(429)})
def send_batch(
    messages: Annotated[list[dict[str, Any]], Body()],
    request: Request,
    key: Caller,
    found: Services,
) -> list[dict[str, Any]]:
    """Enqueue many e-mails in one request: one result per item, in order, each either the
    delivery (``id``, ``status``) or the error naming its field; the valid ones are queued."""
    if len(messages) > MAX_BATCH:
        raise InvalidInputError(f"at most {MAX_BATCH} messages per batch", field="messages")
    results: list[dict[str, Any] | None] = [None] * len(messages)
    valid: list[tuple[int, MessageInput]] = []
    for index, raw in enumerate(messages):
        try:
            message = MessageInput.model_validate(raw)
            refuse_other_domains(message, key.limits)
            found.producer.check_limits(message)
        except ValidationError as exc:
            problem = exc.errors(include_url=False, include_input=False)[0]
            field = field_of(problem["loc"])
            results[index] = {
                "index": index,
                **error_body(str(problem["msg"]).removeprefix("Value error, "), field or None),
            }
        except InvalidInputError as exc:
            detail = str(exc).removeprefix(f"{exc.field}: ")
            results[index] = {"index": index, **error_body(detail, exc.field)}
        else:
            valid.append((index, message))
    # The whole batch is within the key's limits or none of it is stored.
    found.key_quota.admit(key, new_deliveries(found.context.deliveries, key, [m for _, m in valid]))
    created = found.producer.enqueue_many([m for _, m in valid], created_by=key.name)
    for (index, message), each, current in zip(
        valid, created, _current(found, created), strict=True
    ):
        results[index] = {"index": index, **_accepted(request, each, current, message)}
    return [result for result in results if result is not None]


def _readable(found: ApiServices, key: ApiKey, delivery_id: str) -> DeliveryRecord:
    """The delivery, if ``key`` may read it; another producer's is as unknown as a missing one."""
    record = found.context.deliveries.get(delivery_id)
    owner = _owned(key)
    if owner is not None and record.created_by != owner:
        raise DeliveryNotFoundError(f"no delivery with id {delivery_id!r}")
    return record


@router.get("/{delivery_id}", name="read_email", responses=answers(404))
def read_email(delivery_id: str, key: Caller, found: Services) -> dict[str, Any]:
    """The delivery as ``outbox status ID --json`` shows it: recipients and every attempt.
    A producer key reads only the deliveries it created."""
    return record_summary(_readable(found, key, delivery_id))


@router.get("", responses=answers(422))
def list_emails(
    key: Caller,
    found: Services,
    status_filter: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Deliveries, newest first; pass ``next_cursor`` back for the next page. An admin sees
    every delivery by its last status change; a producer key only those it created, by
    creation."""
    page = found.context.deliveries.page(status_filter, limit, cursor, created_by=_owned(key))
    return {
        "items": [record_summary(record) for record in page.records],
        "next_cursor": page.next_cursor,
    }


@router.post("/retry-failed", responses=answers(403))
def retry_failed(_: Admin, found: Services) -> dict[str, Any]:
    """Queue every failed delivery again (after the cause was fixed)."""
    return {"requeued": [record.id for record in found.producer.retry_all_failed()]}


@router.post("/{delivery_id}/retry", responses=answers(403, 404, 409))
def retry(delivery_id: str, _: Admin, found: Services) -> dict[str, Any]:
    """Queue a failed or partially sent delivery again."""
    [record] = found.producer.retry([delivery_id])
    return {"id": record.id, "status": record.status.value}


@router.delete("/{delivery_id}", responses=answers(403, 404, 409))
def cancel_email(delivery_id: str, key: Caller, found: Services) -> dict[str, Any]:
    """Cancel a scheduled, queued, retrying or waiting delivery: it becomes ``cancelled`` and
    is never sent. One being sent right now, or already final, answers 409 saying why. A
    producer key cancels only the deliveries it created."""
    _readable(found, key, delivery_id)
    [outcome] = found.producer.cancel([delivery_id])
    if not outcome.cancelled:
        raise NotCancellableError(f"delivery {delivery_id} was not cancelled: {outcome.reason}")
    return {"id": outcome.id, "status": outcome.status.value}


class CancelRequest(BaseModel):
    """Which deliveries to cancel: those whose idempotency key starts with the prefix."""

    model_config = ConfigDict(extra="forbid")

    idempotency_prefix: str = Field(min_length=1, max_length=200)


@router.post("/cancel", responses=WITH_BODY)
def cancel_emails(request: CancelRequest, key: Caller, found: Services) -> dict[str, Any]:
    """Cancel every delivery whose idempotency key starts with ``idempotency_prefix`` (a
    producer withdrawing a whole run): a producer key among its own keys, an admin among
    all. Answers which were cancelled, and why the others were not."""
    owner = _owned(key)
    outcomes = found.producer.cancel_by_idempotency_prefix(
        request.idempotency_prefix, owner=ALL_OWNERS if owner is None else owner
    )
    return cancel_summary(outcomes)
