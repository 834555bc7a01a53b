"""Validation of messages at the edge (Python API, CLI, batch files): field-named errors."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from config.addresses import mailbox_address
from config.header_text import single_line
from worker.message import Attachment, OutgoingMessage
from worker.records import Priority

__all__ = [
    "MAX_SCHEDULE_AHEAD",
    "RESERVED_HEADERS",
    "RESERVED_HEADER_PREFIXES",
    "Address",
    "AttachmentInput",
    "MessageInput",
    "describe_validation_error",
    "field_path",
]

# How far ahead an e-mail may be scheduled: further is more likely a mistake than a plan.
MAX_SCHEDULE_AHEAD = timedelta(days=365)
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII except ':'
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")
# Headers outbox writes itself, and those that belong to the transport (trace, resent and
# signature headers): a producer setting them would corrupt or spoof the message.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "received",
        "return-path",
        "dkim-signature",
        "authentication-results",
        "orig-date",
    }
)
RESERVED_HEADER_PREFIXES = ("content-", "resent-", "arc-")

Address = Annotated[str, AfterValidator(mailbox_address)]


class AttachmentInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=255)
    content_type: str = "application/octet-stream"
    content: bytes = Field(repr=False)

    @model_validator(mode="before")
    @classmethod
    def _decode_base64(cls, data: Any) -> Any:
        if isinstance(data, dict) and "content_base64" in data:
            data = dict(data)
            try:
                data["content"] = base64.b64decode(data.pop("content_base64"), validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ValueError("content_base64 is not valid base64") from None
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        single_line(value)
        if "/" in value or "\\" in value:
            raise ValueError("must be a file name, not a path")
        return value

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str) -> str:
        if not _CONTENT_TYPE.match(value):
            raise ValueError("must look like type/subtype, e.g. application/pdf")
        return value.lower()


class MessageInput(BaseModel):
    """An e-mail as a producer submits it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    subject: str = Field(max_length=998)
    text: str | None = None
    html: str | None = None
    reply_to: list[Address] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentInput] = Field(default_factory=list)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    priority: Priority = Priority.NORMAL
    # When to send it: RFC 3339 with a time zone. A time already past means now.
    send_at: AwareDatetime | None = None

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return single_line(value)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and any(c.isspace() for c in value):
            raise ValueError("must not contain whitespace")
        return value

    @field_validator("send_at")
    @classmethod
    def _send_at(cls, value: datetime | None) -> datetime | None:
        if value is not None and value - datetime.now(UTC) > MAX_SCHEDULE_AHEAD:
            raise ValueError("must be at most a year from now")
        return value

    def send_at_timestamp(self, now: float) -> float | None:
        """When to send it (unix time), or None for at once: not set, or already past."""
        if self.send_at is None:
            return None
        at = self.send_at.timestamp()
        return at if at > now else None

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid field name")
            folded = name.lower()
            if folded in RESERVED_HEADERS or folded.startswith(RESERVED_HEADER_PREFIXES):
                raise ValueError(f"header {name!r} is set by outbox or the mail servers")
            if folded in seen:
                # Header names are case-insensitive: these would be one header, twice.
                raise ValueError(f"headers {seen[folded]!r} and {name!r} are the same header")
            seen[folded] = name
            try:
                single_line(value)
            except ValueError as exc:
                raise ValueError(f"header {name!r} {exc}") from None
        return headers

    @model_validator(mode="after")
    def _has_recipient(self) -> MessageInput:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("at least one recipient (to, cc or bcc) is required")
        return self

    def size(self) -> int:
        """Bytes of what will be sent, at least: every part the producer wrote."""
        return sum(self.sizes().values())

    def sizes(self) -> dict[str, int]:
        """Bytes of each field that goes into the message: bodies and headers in UTF-8,
        attachments in base64 (so a limit names the field that broke it)."""
        return {
            "subject": len(self.subject.encode()),
            "text": len((self.text or "").encode()),
            "html": len((self.html or "").encode()),
            "headers": sum(len(f"{n}: {v}\r\n".encode()) for n, v in self.headers.items()),
            "reply_to": sum(len(a.encode()) + 2 for a in self.reply_to),
            "attachments": sum(len(a.content) * 4 // 3 + len(a.name) for a in self.attachments),
        }

    def recipient_count(self) -> int:
        return len({*self.to, *self.cc, *self.bcc})

    def addresses(self) -> int:
        """Distinct addresses the message names: its recipients and its reply-to."""
        return len({*self.to, *self.cc, *self.bcc, *self.reply_to})

    def to_outgoing(self, message_id: str) -> OutgoingMessage:
        return OutgoingMessage(
            message_id=message_id,
            to=tuple(self.to),
            cc=tuple(self.cc),
            bcc=tuple(self.bcc),
            subject=self.subject,
            text=self.text,
            html=self.html,
            reply_to=tuple(self.reply_to),
            headers=tuple(self.headers.items()),
            attachments=tuple(
                Attachment(a.name, a.content_type, a.content) for a in self.attachments
            ),
        )


def field_path(location: Sequence[int | str]) -> str:
    """A pydantic error location as the caller names the field: ``to[0]``, ``headers.X-A``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming its field (``to[0]``, ``attachments[1].name``)."""
    return "; ".join(
        f"{field_path(problem['loc']) or 'message'}: {problem['msg'].removeprefix('Value error, ')}"
        for problem in error.errors(include_url=False, include_input=False)
    )
