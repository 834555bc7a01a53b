"""``/api/emails``: enqueue e-mails (one or a batch), read their status, cancel them, retry
failed ones."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.auth import Admin, Caller
from api.errors import answers, error_body, field_of
from api.key_limits import new_deliveries, refuse_other_domains
from api.services import ApiServices, services
from config.api_keys import ApiKey, Role
from config.errors import DeliveryNotFoundError, InvalidInputError, NotCancellableError
from tasks.message_input import MessageInput
from tasks.producer import cancel_summary
from worker.records import (
    ALL_OWNERS,
    Created,
    DeliveryRecord,
    DeliveryStatus,
    record_summary,
)

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
        "status_url": str(request.url_for("read_email", delivery_id=created.id)),
    }


def _current(found: ApiServices, created: list[Created]) -> list[DeliveryStatus | None]:
    """Statuses of deliveries an idempotency key gave back (new ones are queued, or
    scheduled)."""
    repeated = [c.id for c in created if not c.created]
    statuses = dict(zip(repeated, found.context.deliveries.statuses(repeated), strict=True))
    return [statuses.get(c.id) for c in created]


def _owned(key: ApiKey) -> str | None:
    """Whose deliveries ``key`` may see: its own, or (None) everyone's for an admin."""
    return None if key.role is Role.ADMIN else key.name


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses={**WITH_BODY, **answers(429)})
def send_email(
    message: MessageInput,
    request: Request,
    key: Caller,
    found: Services,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Enqueue one e-mail; answers at once with its id (the worker sends it)."""
    if idempotency_key is not None:
        try:
            # dict(): the fields as they are, attachments not copied; validated again for the key.
            message = MessageInput.model_validate(
                {**dict(message), "idempotency_key": idempotency_key}
            )
        except ValidationError as exc:
            problem = exc.errors(include_url=False, include_input=False)[0]
            message_text = str(problem["msg"]).removeprefix("Value error, ")
            raise InvalidInputError(message_text, field="Idempotency-Key") from None
    refuse_other_domains(message, key.limits)
    found.producer.check_limits(message)  # a message refused anyway uses up no quota
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
