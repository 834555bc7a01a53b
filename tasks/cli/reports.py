"""``outbox report``: e-mail a finished run's results to its schedule's recipient lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from tasks.cli.common import JsonFlag, load_context, producer_for
from tasks.cli.errors import EXIT_USAGE, fail
from tasks.message_input import describe_validation_error
from tasks.reports.model import RunReport
from tasks.reports.service import RunResult, report_service
from worker.errors import InvalidInputError

__all__ = ["report_app"]

# Registered on the top-level `outbox` command: `outbox report`.
report_app = typer.Typer()


@report_app.command()
def report(
    run_file: Annotated[Path, typer.Option("--file", help="The finished run, as JSON.")],
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
    result = report_service(context, producer_for(context)).post(run)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
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
