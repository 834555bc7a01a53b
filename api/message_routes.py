"""``/api/emails/{id}/message``: the MIME message a delivery captured in the ``capture``
delivery mode (staging), whole, in parts, or its HTML alone, safe to open."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.auth import Caller
from api.errors import answers
from api.services import ApiServices, services
from config.api_keys import ApiKey, Role
from config.errors import DeliveryNotFoundError, NotFoundError
from worker.records.captured import captured_message

__all__ = ["HTML_POLICY", "router"]

router = APIRouter(
    prefix="/api/emails/{delivery_id}/message",
    tags=["e-mails"],
    responses=answers(401, 404, 503),
)

Services = Annotated[ApiServices, Depends(services)]

# A captured e-mail's HTML is whatever a producer wrote: it may run no script, load nothing
# from anywhere (no tracking pixel, no remote style), submit nothing, and, sandboxed, has no
# origin of its own even when opened directly. Only outbox's own page may frame it.
HTML_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
)
_HTML_HEADERS = {
    "Content-Security-Policy": HTML_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
}


class NoCapturedMessageError(NotFoundError):
    """The delivery exists but keeps no captured message (it was not captured)."""


class MessageParts(BaseModel):
    """A captured message as a page shows it: every part a string, nothing rendered."""

    subject: str | None
    text: str | None = Field(description="The text/plain body, or null when it has none.")
    html: str | None = Field(description="The text/html body, or null when it has none.")
    headers: list[tuple[str, str]] = Field(description="Every header, in order: [name, value].")
    attachments: list[dict[str, Any]] = Field(
        description="Each attachment's name, content_type and size (bytes)."
    )


def _captured(found: ApiServices, key: ApiKey, delivery_id: str) -> bytes:
    """The captured message, if ``key`` may read the delivery (as ``GET /api/emails/{id}``:
    an admin any, a producer key its own; another's is as unknown as a missing one)."""
    record = found.context.deliveries.get(delivery_id)
    if key.role is not Role.ADMIN and record.created_by != key.name:
        raise DeliveryNotFoundError(f"no delivery with id {delivery_id!r}")
    message = captured_message(found.context.redis, delivery_id)
    if message is None:
        raise NoCapturedMessageError(
            f"delivery {delivery_id} has no captured message: it is {record.status.value} "
            "(only an e-mail sent while the delivery mode was capture keeps its message)"
        )
    return message


def _parsed(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)  # the default policy's message class
    return parsed


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or not isinstance(part, EmailMessage):
        return None
    content = part.get_content()
    return content if isinstance(content, str) else None


@router.get(
    "",
    response_class=Response,
    responses={
        200: {
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The MIME message as it would have been sent (Bcc not in it).",
        },
        **answers(404),
    },
)
def read_message(delivery_id: str, key: Caller, found: Services) -> Response:
    """The captured MIME message, byte for byte, as ``{id}.eml``; 404 when the delivery was
    not captured."""
    return Response(
        _captured(found, key, delivery_id),
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{delivery_id}.eml"'},
    )


@router.get("/parts", response_model=MessageParts, responses=answers(404))
def read_message_parts(delivery_id: str, key: Caller, found: Services) -> MessageParts:
    """The captured message's subject, text and HTML bodies, headers and attachments, as
    text (decoded; the HTML is not made safe here: show it only in a sandboxed frame, e.g.
    from ``/message/html``)."""
    message = _parsed(_captured(found, key, delivery_id))
    return MessageParts(
        subject=str(message["Subject"]) if message["Subject"] is not None else None,
        text=_body(message, "plain"),
        html=_body(message, "html"),
        headers=[(name, str(value)) for name, value in message.items()],
        attachments=[
            {
                "name": part.get_filename(),
                "content_type": part.get_content_type(),
                "size": len(part.get_payload(decode=True) or b""),
            }
            for part in message.iter_attachments()
        ],
    )


@router.get(
    "/html",
    response_class=Response,
    responses={
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "The HTML body, under a policy that runs no script and loads "
            "nothing (Content-Security-Policy with sandbox).",
        },
        **answers(404),
    },
)
def read_message_html(delivery_id: str, key: Caller, found: Services) -> Response:
    """The captured message's HTML body alone, to show in a sandboxed frame: it runs no
    script and loads nothing from elsewhere, even opened directly; 404 without one."""
    html = _body(_parsed(_captured(found, key, delivery_id)), "html")
    if html is None:
        raise NoCapturedMessageError(f"the captured message of {delivery_id} has no HTML part")
    return Response(html, media_type="text/html; charset=utf-8", headers=_HTML_HEADERS)
