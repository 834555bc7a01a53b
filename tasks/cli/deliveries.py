"""The commands about e-mails: send, status, list, cancel, retry, purge."""

from __future__ import annotations

import json
import mimetypes
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from config.errors import InvalidInputError
from tasks.cli.batch import send_batch
from tasks.cli.common import JsonFlag, load_context, local_time, producer_for
from tasks.cli.errors import EXIT_FAILED, EXIT_USAGE, fail
from tasks.context import OutboxContext
from tasks.message_input import MessageInput, describe_validation_error
from tasks.producer import cancel_summary
from worker.records import (
    ALL_OWNERS,
    Created,
    DeliveryRecord,
    DeliveryStatus,
    Priority,
    record_summary,
)

__all__ = ["deliveries_app"]

# Registered on the top-level `outbox` command: `outbox send`, not `outbox deliveries send`.
deliveries_app = typer.Typer()


def _attachment(path: Path) -> dict[str, Any]:
    try:
        content = path.read_bytes()
    except OSError as exc:
        fail(f"--attach {path}: {exc.strerror}", EXIT_USAGE)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"name": path.name, "content_type": content_type, "content": content}


def _read_text(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{option} {path}: {exc}", EXIT_USAGE)


# The options of `outbox send`, named here so that its signature reads as the interface.
ToOption = Annotated[list[str] | None, typer.Option("--to", help="Recipient (repeatable).")]
CcOption = Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient.")]
BccOption = Annotated[list[str] | None, typer.Option("--bcc", help="Bcc recipient.")]
SubjectOption = Annotated[str | None, typer.Option(help="Subject line.")]
TextOption = Annotated[str | None, typer.Option(help="Plain-text body.")]
TextFileOption = Annotated[Path | None, typer.Option(help="Plain-text body from a file.")]
HtmlFileOption = Annotated[Path | None, typer.Option(help="HTML body from a file.")]
AttachOption = Annotated[list[Path] | None, typer.Option(help="Attach a file (repeatable).")]
IdempotencyKeyOption = Annotated[
    str | None, typer.Option(help="Same key, same delivery: never sent twice.")
]
PriorityOption = Annotated[
    Priority, typer.Option(help="high: before any waiting normal or low e-mail.")
]
SendAtOption = Annotated[
    str | None,
    typer.Option(
        help="Send at this time (RFC 3339 with a time zone, e.g. 2026-12-24T08:00:00+01:00); "
        "stored 'scheduled' until then."
    ),
]
WaitOption = Annotated[
    float | None,
    typer.Option(help="Wait up to SECONDS for a final status; exit 0 if sent (or captured)."),
]
BatchOption = Annotated[
    Path | None,
    typer.Option(
        help="Enqueue every JSON message of a .jsonl file, one per line; with --json, "
        "one JSON result per line."
    ),
]


@deliveries_app.command()
def send(
    to: ToOption = None,
    cc: CcOption = None,
    bcc: BccOption = None,
    subject: SubjectOption = None,
    text: TextOption = None,
    text_file: TextFileOption = None,
    html_file: HtmlFileOption = None,
    attach: AttachOption = None,
    idempotency_key: IdempotencyKeyOption = None,
    priority: PriorityOption = Priority.NORMAL,
    send_at: SendAtOption = None,
    wait: WaitOption = None,
    batch: BatchOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Enqueue an e-mail and print its delivery id."""
    if batch is not None:
        message_options = (to, cc, bcc, subject, text, text_file, html_file, attach, send_at)
        if any(message_options) or priority is not Priority.NORMAL:
            fail("--batch takes every message from the file; no other message options", EXIT_USAGE)
        _send_batch(batch, as_json)
        return
    if text is not None and text_file is not None:
        fail("give --text or --text-file, not both", EXIT_USAGE)
    if subject is None:
        fail("subject: --subject is required", EXIT_USAGE)
    message = _validated_message(
        {
            "to": to or [],
            "cc": cc or [],
            "bcc": bcc or [],
            "subject": subject,
            "text": text if text is not None else _read_text(text_file, "--text-file"),
            "html": _read_text(html_file, "--html-file"),
            "attachments": [_attachment(path) for path in attach or []],
            "idempotency_key": idempotency_key,
            "priority": priority,
            "send_at": send_at,
        }
    )
    context = load_context()
    created = producer_for(context).enqueue(message)
    if wait is None:
        _print_created(created, as_json)
    else:
        _wait_and_report(context, created.id, wait, as_json)


def _validated_message(raw: dict[str, Any]) -> MessageInput:
    """The message the options describe; an invalid one is an error naming its field."""
    try:
        return MessageInput.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None


def _print_created(created: Created, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"id": created.id, "created": created.created}))
    else:
        typer.echo(created.id)


def _wait_and_report(
    context: OutboxContext, delivery_id: str, seconds: float, as_json: bool
) -> None:
    """Print the delivery's status once final (or when ``seconds`` run out); exit 1 unless it
    was sent."""
    record = _wait_for_final(context, delivery_id, seconds)
    if as_json:
        typer.echo(json.dumps(record_summary(record), indent=2))
    else:
        typer.echo(delivery_id)
        typer.echo(
            f"{record.status.value}" + (f": {record.last_error}" if record.last_error else "")
        )
    # Captured (the staging mode) is what sent is in production: scripts need not tell.
    if record.status not in (DeliveryStatus.SENT, DeliveryStatus.CAPTURED):
        raise typer.Exit(EXIT_FAILED)


def _wait_for_final(context: OutboxContext, delivery_id: str, seconds: float) -> DeliveryRecord:
    deadline = time.monotonic() + seconds
    while True:
        record = context.deliveries.get(delivery_id)
        if record.status.is_final or time.monotonic() >= deadline:
            return record
        time.sleep(0.05)


def _send_batch(path: Path, as_json: bool) -> None:
    try:
        handle = path.open("rb")
    except OSError as exc:
        fail(f"--batch {path}: {exc.strerror}", EXIT_USAGE)
    with handle:
        report = send_batch(handle, producer_for(load_context()), as_json=as_json)
    if report.refused:
        raise typer.Exit(EXIT_USAGE)


@deliveries_app.command()
def status(delivery_id: str, as_json: JsonFlag = False) -> None:
    """Show one delivery: status, recipients, attempts."""
    context = load_context()
    record = context.deliveries.get(delivery_id)
    summary = record_summary(record)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{record.id}  {record.status.value}  {record.message.subject!r}")
    typer.echo(
        f"created {local_time(record.created_at)}"
        + (f" by the key {record.created_by}" if record.created_by else "")
        + f"  updated {local_time(record.updated_at)}"
    )
    if record.status is DeliveryStatus.SCHEDULED and record.send_at:
        typer.echo(f"scheduled for {local_time(record.send_at)}")
    elif record.waiting_for and record.next_attempt_at:
        typer.echo(f"waiting for {record.waiting_for}, until {local_time(record.next_attempt_at)}")
    elif record.next_attempt_at:
        typer.echo(f"next attempt at {local_time(record.next_attempt_at)}")
    if record.last_error:
        typer.echo(f"last error: {record.last_error}")
    for recipient in record.recipients:
        detail = f" {recipient.code} {recipient.reply}" if recipient.code else ""
        typer.echo(f"  {recipient.status.value:9} {recipient.address}{detail}")
    for attempt in record.attempts:
        typer.echo(
            f"  attempt {attempt.number} at {local_time(attempt.started_at)}: {attempt.outcome}"
            f" ({attempt.duration_ms:.0f} ms){': ' + attempt.error if attempt.error else ''}"
        )


@deliveries_app.command("list")
def list_deliveries(
    status_filter: Annotated[
        DeliveryStatus | None, typer.Option("--status", help="Only this status.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most N, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List recent deliveries, newest first."""
    context = load_context()
    records = context.deliveries.recent(status_filter, limit)
    if as_json:
        typer.echo(json.dumps([record_summary(r) for r in records], indent=2))
        return
    for record in records:
        typer.echo(
            f"{record.id}  {record.status.value:14} {local_time(record.updated_at)}  "
            f"{record.message.subject!r}"
        )


@deliveries_app.command()
def cancel(
    delivery_ids: Annotated[list[str] | None, typer.Argument(help="Delivery ids.")] = None,
    idempotency_prefix: Annotated[
        str | None,
        typer.Option(help="Every delivery whose idempotency key starts with this (a whole run)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel scheduled, queued, retrying or waiting deliveries: they are never sent. One being
    sent right now, or already final, is left as it is (exit 1, saying why)."""
    if bool(delivery_ids) == (idempotency_prefix is not None):
        fail("give delivery ids or --idempotency-prefix", EXIT_USAGE)
    producer = producer_for(load_context())
    outcomes = (
        producer.cancel(delivery_ids or [])
        if idempotency_prefix is None
        else producer.cancel_by_idempotency_prefix(idempotency_prefix, owner=ALL_OWNERS)
    )
    if as_json:
        typer.echo(json.dumps(cancel_summary(outcomes), indent=2))
    else:
        for outcome in outcomes:
            typer.echo(
                f"cancelled {outcome.id}"
                if outcome.cancelled
                else f"not cancelled {outcome.id}: {outcome.reason}"
            )
        if not outcomes:
            typer.echo(f"no delivery has an idempotency key starting with {idempotency_prefix!r}")
    if not all(outcome.cancelled for outcome in outcomes):
        raise typer.Exit(EXIT_FAILED)


@deliveries_app.command()
def retry(
    delivery_ids: Annotated[list[str] | None, typer.Argument(help="Delivery ids.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed one.")] = False,
) -> None:
    """Queue failed deliveries again (after fixing the settings)."""
    if bool(delivery_ids) == all_failed:
        fail("give delivery ids or --all-failed", EXIT_USAGE)
    context = load_context()
    producer = producer_for(context)
    records = producer.retry_all_failed() if all_failed else producer.retry(delivery_ids or [])
    for record in records:
        typer.echo(f"requeued {record.id}")
    if all_failed and not records:
        typer.echo("no failed deliveries")


@deliveries_app.command()
def purge(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Delete final records older than DAYS.")
    ],
) -> None:
    """Delete sent and failed records last updated more than DAYS ago."""
    removed = load_context().deliveries.purge(older_than * 86400)
    typer.echo(f"purged {removed} deliveries")
