"""``/api/emails``: enqueue e-mails (one or a batch), read their status, retry failed ones."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, status
from pydantic import ValidationError

from api.auth import Admin, Caller
from api.errors import error_body, field_of
from api.services import ApiServices, services
from tasks.message_input import MessageInput
from worker.errors import InvalidInputError
from worker.records import Created, DeliveryStatus, record_summary

__all__ = ["MAX_BATCH", "router"]

MAX_BATCH = 1000  # messages per batch request

router = APIRouter(prefix="/api/emails", tags=["e-mails"])

Services = Annotated[ApiServices, Depends(services)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="The same key gives back the same delivery instead of a second one.",
    ),
]


def _accepted(request: Request, created: Created, current: DeliveryStatus | None) -> dict[str, Any]:
    return {
        "id": created.id,
        "status": (current or DeliveryStatus.QUEUED).value,
        "created": created.created,
        "status_url": str(request.url_for("read_email", delivery_id=created.id)),
    }


def _current(found: ApiServices, created: list[Created]) -> list[DeliveryStatus | None]:
    """Statuses of deliveries an idempotency key gave back (new ones are queued)."""
    repeated = [c.id for c in created if not c.created]
    statuses = dict(zip(repeated, found.context.deliveries.statuses(repeated), strict=True))
    return [statuses.get(c.id) for c in created]


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def send_email(
    message: MessageInput,
    request: Request,
    _: Caller,
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
    created = found.producer.enqueue(message)
    return _accepted(request, created, _current(found, [created])[0])


@router.post("/batch")
def send_batch(
    messages: Annotated[list[dict[str, Any]], Body()],
    request: Request,
    _: Caller,
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
    created = found.producer.enqueue_many([m for _, m in valid]) if valid else []
    for (index, _m), each, current in zip(valid, created, _current(found, created), strict=True):
        results[index] = {"index": index, **_accepted(request, each, current)}
    return [result for result in results if result is not None]


@router.get("/{delivery_id}", name="read_email")
def read_email(delivery_id: str, _: Caller, found: Services) -> dict[str, Any]:
    """The delivery as ``outbox status ID --json`` shows it: recipients and every attempt."""
    return record_summary(found.context.deliveries.get(delivery_id))


@router.get("")
def list_emails(
    _: Caller,
    found: Services,
    status_filter: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Deliveries, newest status change first; pass ``next_cursor`` back for the next page."""
    page = found.context.deliveries.page(status_filter, limit, cursor)
    return {
        "items": [record_summary(record) for record in page.records],
        "next_cursor": page.next_cursor,
    }


@router.post("/retry-failed")
def retry_failed(_: Admin, found: Services) -> dict[str, Any]:
    """Queue every failed delivery again (after the cause was fixed)."""
    return {"requeued": [record.id for record in found.producer.retry_all_failed()]}


@router.post("/{delivery_id}/retry")
def retry(delivery_id: str, _: Admin, found: Services) -> dict[str, Any]:
    """Queue a failed or partially sent delivery again."""
    [record] = found.producer.retry([delivery_id])
    return {"id": record.id, "status": record.status.value}
