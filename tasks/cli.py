"""The ``outbox`` command line: settings, send, status, list, retry, worker, flower, purge.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or invalid input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis
import typer
from kombu.exceptions import OperationalError
from pydantic import SecretStr, ValidationError

from config.mail_settings import (
    DEFAULT_API_URL,
    DEFAULT_INSTANCE,
    OAuthSettings,
    SmtpSettings,
    TlsMode,
)
from config.redis_location import EmbeddedRedisError
from config.secret_box import SecretKeyError
from config.settings_store import SettingsNotConfiguredError
from tasks.context import OutboxContext
from tasks.message_input import MessageInput, describe_validation_error
from tasks.producer import MessageTooLargeError, Producer
from tasks.settings_checks import check_connection, send_test_email
from worker.delivery_store import DeliveryNotFoundError, NotRetryableError
from worker.errors import DeliveryError
from worker.records import DeliveryRecord, DeliveryStatus, record_summary

EXIT_FAILED = 1
EXIT_USAGE = 2
CELERY_APP = "tasks.worker_app"

app = typer.Typer(
    help="outbox: reliable background e-mail delivery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
settings_app = typer.Typer(help="Show, change and check the mail settings.", no_args_is_help=True)
set_app = typer.Typer(help="Save new mail settings (a new version).", no_args_is_help=True)
app.add_typer(settings_app, name="settings")
settings_app.add_typer(set_app, name="set")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class StatusChoice(StrEnum):
    queued = "queued"
    sending = "sending"
    retrying = "retrying"
    sent = "sent"
    partially_sent = "partially_sent"
    failed = "failed"


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _context() -> OutboxContext:
    try:
        context = OutboxContext.from_environment()
        _ = context.secret_box  # a malformed key is reported here, not mid-command
    except ValidationError as exc:
        _fail(f"invalid environment: {describe_validation_error(exc)}", EXIT_USAGE)
    except SecretKeyError as exc:
        _fail(str(exc), EXIT_USAGE)
    return context


def _producer(context: OutboxContext) -> Producer:
    from tasks.celery_app import celery_publisher, create_celery_app

    return Producer(
        context.deliveries,
        celery_publisher(create_celery_app(context)),
        message_id_domain=context.settings.message_id_domain,
        max_message_bytes=context.settings.max_message_bytes,
    )


def _read_secret_from_stdin() -> str:
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        _fail("no secret on standard input", EXIT_USAGE)
    return secret


def _save(context: OutboxContext, build: Any) -> None:
    try:
        settings = build()
    except ValidationError as exc:
        _fail(describe_validation_error(exc), EXIT_USAGE)
    version = context.settings_store.save(settings)
    typer.echo(f"saved mail settings version {version} ({settings.protocol})")


@set_app.command("smtp")
def settings_set_smtp(
    from_mailbox: Annotated[str, typer.Option(help="Sender address; test e-mails go here.")],
    server: Annotated[str, typer.Option(help="SMTP server host name or IP.")] = "localhost",
    port: Annotated[int, typer.Option(help="SMTP port.")] = 587,
    username: Annotated[str | None, typer.Option(help="Login name; none: no login.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    tls: Annotated[TlsMode, typer.Option(help="auto: 465 implicit, else STARTTLS if offered.")] = (
        TlsMode.AUTO
    ),
    accept_any_certificate: Annotated[
        bool,
        typer.Option(
            "--accept-any-certificate/--verify-certificate",
            help="Accept invalid TLS certificates (off by default).",
        ),
    ] = False,
) -> None:
    """Send through an SMTP server. Without --password-stdin the stored password is kept."""
    context = _context()
    password = _read_secret_from_stdin() if password_stdin else None
    _save(
        context,
        lambda: SmtpSettings(
            server=server,
            port=port,
            from_mailbox=from_mailbox,
            username=username,
            password=SecretStr(password) if password else None,
            tls=tls,
            accept_any_certificate=accept_any_certificate,
        ),
    )


@set_app.command("oauth")
def settings_set_oauth(
    from_mailbox: Annotated[str, typer.Option(help="Mailbox to send as.")],
    tenant: Annotated[str, typer.Option(help="Directory (tenant) ID.")],
    client_id: Annotated[str, typer.Option(help="Application (client) ID.")],
    client_secret_stdin: Annotated[
        bool, typer.Option("--client-secret-stdin", help="Read the client secret from stdin.")
    ] = False,
    instance: Annotated[str, typer.Option(help="Identity platform URL.")] = DEFAULT_INSTANCE,
    api_url: Annotated[str, typer.Option(help="Microsoft Graph URL.")] = DEFAULT_API_URL,
) -> None:
    """Send through Microsoft Graph. Without --client-secret-stdin the stored secret is kept."""
    context = _context()
    secret = _read_secret_from_stdin() if client_secret_stdin else None
    _save(
        context,
        lambda: OAuthSettings(
            from_mailbox=from_mailbox,
            tenant=tenant,
            client_id=client_id,
            client_secret=SecretStr(secret) if secret else None,
            instance=instance,
            api_url=api_url,
        ),
    )


def _stored_settings(context: OutboxContext) -> SmtpSettings | OAuthSettings:
    try:
        return context.settings_store.require().settings
    except SettingsNotConfiguredError as exc:
        _fail(str(exc))
    except SecretKeyError as exc:
        _fail(str(exc))


@settings_app.command("show")
def settings_show(as_json: JsonFlag = False) -> None:
    """Show the saved settings; secrets are masked."""
    context = _context()
    view = context.settings_store.masked_view()
    if view is None:
        _fail("mail settings are not configured")
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    for name, value in view.items():
        typer.echo(f"{name:24} {value if value is not None else '-'}")


@settings_app.command("test-connection")
def settings_test_connection() -> None:
    """Connect, secure and log in with the saved settings; exit 1 with the reason on failure."""
    context = _context()
    settings = _stored_settings(context)
    try:
        outcome = asyncio.run(check_connection(settings, context.transport_options))
    except DeliveryError as exc:
        _fail(f"connection test failed: {exc.reason}")
    typer.echo(f"connection OK: {outcome}")


@settings_app.command("send-test")
def settings_send_test() -> None:
    """Send a test e-mail to the from mailbox; exit 1 with the reason on failure."""
    context = _context()
    settings = _stored_settings(context)
    try:
        outcome = asyncio.run(
            send_test_email(settings, context.transport_options, context.settings.message_id_domain)
        )
    except DeliveryError as exc:
        _fail(f"test e-mail not sent: {exc.reason}")
    typer.echo(outcome)


def _attachment(path: Path) -> dict[str, Any]:
    try:
        content = path.read_bytes()
    except OSError as exc:
        _fail(f"--attach {path}: {exc.strerror}", EXIT_USAGE)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"name": path.name, "content_type": content_type, "content": content}


def _read_text(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{option} {path}: {exc}", EXIT_USAGE)


@app.command()
def send(
    to: Annotated[list[str] | None, typer.Option("--to", help="Recipient (repeatable).")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient.")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc", help="Bcc recipient.")] = None,
    subject: Annotated[str | None, typer.Option(help="Subject line.")] = None,
    text: Annotated[str | None, typer.Option(help="Plain-text body.")] = None,
    text_file: Annotated[Path | None, typer.Option(help="Plain-text body from a file.")] = None,
    html_file: Annotated[Path | None, typer.Option(help="HTML body from a file.")] = None,
    attach: Annotated[list[Path] | None, typer.Option(help="Attach a file (repeatable).")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same delivery: never sent twice.")
    ] = None,
    wait: Annotated[
        float | None, typer.Option(help="Wait up to SECONDS for a final status; exit 0 if sent.")
    ] = None,
    batch: Annotated[
        Path | None, typer.Option(help="Enqueue every JSON message of a .jsonl file.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Enqueue an e-mail and print its delivery id."""
    if batch is not None:
        if to or cc or bcc or subject or text or text_file or html_file or attach:
            _fail("--batch takes every message from the file; no other message options", EXIT_USAGE)
        _send_batch(batch, as_json)
        return
    if text is not None and text_file is not None:
        _fail("give --text or --text-file, not both", EXIT_USAGE)
    if subject is None:
        _fail("subject: --subject is required", EXIT_USAGE)
    raw: dict[str, Any] = {
        "to": to or [],
        "cc": cc or [],
        "bcc": bcc or [],
        "subject": subject,
        "text": text if text is not None else _read_text(text_file, "--text-file"),
        "html": _read_text(html_file, "--html-file"),
        "attachments": [_attachment(path) for path in attach or []],
        "idempotency_key": idempotency_key,
    }
    try:
        message = MessageInput.model_validate(raw)
    except ValidationError as exc:
        _fail(describe_validation_error(exc), EXIT_USAGE)
    context = _context()
    try:
        created = _producer(context).enqueue(message)
    except MessageTooLargeError as exc:
        _fail(str(exc), EXIT_USAGE)
    if wait is None:
        if as_json:
            typer.echo(json.dumps({"id": created.id, "created": created.created}))
        else:
            typer.echo(created.id)
        return
    record = _wait_for_final(context, created.id, wait)
    if as_json:
        typer.echo(json.dumps(record_summary(record), indent=2))
    else:
        typer.echo(created.id)
        typer.echo(
            f"{record.status.value}" + (f": {record.last_error}" if record.last_error else "")
        )
    if record.status is not DeliveryStatus.SENT:
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
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--batch {path}: {exc}", EXIT_USAGE)
    context = _context()
    producer = _producer(context)
    valid: list[tuple[int, MessageInput]] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = MessageInput.model_validate_json(line)
            producer.check_size(message)
        except ValidationError as exc:
            problems.append((number, describe_validation_error(exc)))
        except MessageTooLargeError as exc:
            problems.append((number, str(exc)))
        else:
            valid.append((number, message))
    created = producer.enqueue_many([message for _, message in valid]) if valid else []
    results: list[dict[str, Any]] = [
        {"line": number, "id": c.id, "created": c.created}
        for (number, _), c in zip(valid, created, strict=True)
    ]
    results += [{"line": number, "error": error} for number, error in problems]
    results.sort(key=lambda row: row["line"])
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for row in results:
            if "id" in row:
                typer.echo(row["id"])
    for number, error in problems:
        typer.echo(f"line {number}: {error}", err=True)
    if problems:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def status(delivery_id: str, as_json: JsonFlag = False) -> None:
    """Show one delivery: status, recipients, attempts."""
    context = _context()
    try:
        record = context.deliveries.get(delivery_id)
    except DeliveryNotFoundError as exc:
        _fail(str(exc))
    summary = record_summary(record)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{record.id}  {record.status.value}  {record.message.subject!r}")
    typer.echo(f"created {_when(record.created_at)}  updated {_when(record.updated_at)}")
    if record.next_attempt_at:
        typer.echo(f"next attempt at {_when(record.next_attempt_at)}")
    if record.last_error:
        typer.echo(f"last error: {record.last_error}")
    for recipient in record.recipients:
        detail = f" {recipient.code} {recipient.reply}" if recipient.code else ""
        typer.echo(f"  {recipient.status.value:9} {recipient.address}{detail}")
    for attempt in record.attempts:
        typer.echo(
            f"  attempt {attempt.number} at {_when(attempt.started_at)}: {attempt.outcome}"
            f" ({attempt.duration_ms:.0f} ms){': ' + attempt.error if attempt.error else ''}"
        )


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@app.command("list")
def list_deliveries(
    status_filter: Annotated[
        StatusChoice | None, typer.Option("--status", help="Only this status.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most N, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List recent deliveries, newest first."""
    context = _context()
    chosen = DeliveryStatus(status_filter.value) if status_filter else None
    records = context.deliveries.recent(chosen, limit)
    if as_json:
        typer.echo(json.dumps([record_summary(r) for r in records], indent=2))
        return
    for record in records:
        typer.echo(
            f"{record.id}  {record.status.value:14} {_when(record.updated_at)}  "
            f"{record.message.subject!r}"
        )


@app.command()
def retry(
    delivery_ids: Annotated[list[str] | None, typer.Argument(help="Delivery ids.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed one.")] = False,
) -> None:
    """Queue failed deliveries again (after fixing the settings)."""
    if bool(delivery_ids) == all_failed:
        _fail("give delivery ids or --all-failed", EXIT_USAGE)
    context = _context()
    producer = _producer(context)
    try:
        records = producer.retry_all_failed() if all_failed else producer.retry(delivery_ids or [])
    except (DeliveryNotFoundError, NotRetryableError) as exc:
        _fail(str(exc))
    for record in records:
        typer.echo(f"requeued {record.id}")
    if all_failed and not records:
        typer.echo("no failed deliveries")


@app.command()
def purge(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Delete final records older than DAYS.")
    ],
) -> None:
    """Delete sent and failed records last updated more than DAYS ago."""
    removed = _context().deliveries.purge(older_than * 86400)
    typer.echo(f"purged {removed} deliveries")


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_PASSTHROUGH)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    _context()  # fail early with a clear message on a bad environment
    _exec_celery(["worker", "--loglevel", "INFO", "--queues", "outbox", "--events", *ctx.args])


@app.command(context_settings=_PASSTHROUGH)
def flower(ctx: typer.Context) -> None:
    """Run Flower on the outbox broker (extra arguments go to `celery flower`)."""
    _context()
    _exec_celery(["flower", *ctx.args])


def _exec_celery(arguments: list[str]) -> NoReturn:
    # exec: the worker gets the signals (Ctrl-C, SIGTERM from a supervisor) directly.
    command = [sys.executable, "-m", "celery", "--app", CELERY_APP, *arguments]
    os.execv(sys.executable, command)  # noqa: S606


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        app()
    except (redis.RedisError, OperationalError, EmbeddedRedisError, SecretKeyError) as exc:
        # Infrastructure, not input: say what is unreachable instead of a traceback.
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILED)
