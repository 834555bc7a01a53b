"""``outbox report``: e-mail a finished run's results to its schedule's recipient lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from config.errors import InvalidInputError
from tasks.cli.common import JsonFlag, load_context, producer_for
from tasks.cli.errors import EXIT_USAGE, fail
from tasks.message_input import describe_validation_error
from tasks.reports.model import RunReport
from tasks.reports.service import RunPreview, RunResult, report_service

__all__ = ["report_app"]

# Registered on the top-level `outbox` command: `outbox report`.
report_app = typer.Typer()


@report_app.command()
def report(
    run_file: Annotated[Path, typer.Option("--file", help="The finished run, as JSON.")],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the e-mail each list would get; send, store and record nothing.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """E-mail a finished run's results to its schedule's matching recipient lists (once)."""
    try:
        document = run_file.read_bytes()
    except OSError as exc:
        fail(f"--file {run_file}: {exc.strerror}", EXIT_USAGE)
    try:
        run = RunReport.model_validate_json(document)
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None
    context = load_context()
    reports = report_service(context, producer_for(context))
    result = reports.preview(run) if dry_run else reports.post(run)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    elif isinstance(result, RunPreview):
        _print_preview(result)
    else:
        _print_result(result)


def _print_result(result: RunResult) -> None:
    if result.repeated:
        typer.echo(f"run {result.run_id} was reported before; nothing sent again")
    for recipients in result.lists:
        verdict = (
            f"e-mail {recipients.delivery_id}"
            if recipients.matched
            else "rule did not match: not sent"
        )
        typer.echo(f"{recipients.rule.value:10} {', '.join(recipients.to)}: {verdict}")


def _print_preview(result: RunPreview) -> None:
    if result.repeated:
        typer.echo(f"dry run: run {result.run_id} was reported before; it would send nothing again")
    else:
        typer.echo(f"dry run: nothing was sent or recorded for run {result.run_id}")
    for recipients in result.lists:
        heading = f"{recipients.rule.value:10} {', '.join(recipients.to)}"
        email = recipients.preview
        if email is None:
            verdict = (
                f"sent before as e-mail {recipients.delivery_id}"
                if recipients.matched
                else "rule did not match: would not be sent"
            )
            typer.echo(f"\n{heading}: {verdict}")
            continue
        typer.echo(f"\n{heading}: would be sent")
        typer.echo(f"To: {', '.join(email.to)}")
        typer.echo(f"Subject: {email.subject}")
        # The plain-text part is what a person reads in a terminal; the HTML is for --json.
        typer.echo(f"\n{(email.text or '').rstrip()}")
        typer.echo(f"\n(and an HTML part of {len(email.html or '')} characters: --json shows it)")
