"""``outbox send --batch``: a JSON Lines file streamed into the queue in bounded chunks.

The file is never read whole (a 200 MB file costs one chunk of memory), each chunk is
enqueued in one round trip, and every line gets its own result as soon as its chunk is in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import typer
from pydantic import ValidationError

from config.errors import InvalidInputError
from tasks.message_input import MessageInput, describe_validation_error
from tasks.producer import Producer

__all__ = ["CHUNK_BYTES", "CHUNK_MESSAGES", "BatchReport", "send_batch"]

# A chunk ends at whichever comes first: enough messages for one efficient round trip, or
# enough bytes that a file of large messages still holds little in memory.
CHUNK_MESSAGES = 500
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    message: MessageInput | None = None
    error: str | None = None


@dataclass(slots=True)
class BatchReport:
    """How a batch went: lines enqueued and lines refused."""

    enqueued: int = 0
    refused: int = 0


def send_batch(handle: BinaryIO, producer: Producer, *, as_json: bool) -> BatchReport:
    """Enqueue every valid line of ``handle``; print an id (or a JSON line) per line on
    stdout and ``line N: reason`` on stderr for each refused one."""
    report = BatchReport()
    for chunk in _chunks(_lines(handle, producer)):
        valid = [line for line in chunk if line.message is not None]
        try:
            created = producer.enqueue_many([line.message for line in valid if line.message])
        except Exception:
            first, last = chunk[0].number, chunk[-1].number
            # What was stored of this chunk is not lost: the sweeper publishes a stored record
            # that was never queued, and a failed publish records each one as failed.
            typer.echo(
                f"stopped at line {first}: the valid lines before it are enqueued; of lines "
                f"{first} to {last} some may be stored, and those outbox queues or marks failed "
                "itself (see `outbox list`); later lines were not read",
                err=True,
            )
            raise
        ids = {line.number: c for line, c in zip(valid, created, strict=True)}
        for line in chunk:
            if line.number in ids:
                report.enqueued += 1
                delivery = ids[line.number]
                row = {"line": line.number, "id": delivery.id, "created": delivery.created}
                typer.echo(json.dumps(row) if as_json else delivery.id)
            else:
                report.refused += 1
                if as_json:
                    typer.echo(json.dumps({"line": line.number, "error": line.error}))
                typer.echo(f"line {line.number}: {line.error}", err=True)
    return report


def _lines(handle: BinaryIO, producer: Producer) -> Iterator[_Line]:
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            message = MessageInput.model_validate_json(raw)
            producer.check_limits(message)
        except ValidationError as exc:
            yield _Line(number, error=describe_validation_error(exc))
        except InvalidInputError as exc:
            yield _Line(number, error=str(exc))
        else:
            yield _Line(number, message=message)


def _chunks(lines: Iterator[_Line]) -> Iterator[list[_Line]]:
    chunk: list[_Line] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += line.message.size() if line.message else 0
        if len(chunk) >= CHUNK_MESSAGES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
