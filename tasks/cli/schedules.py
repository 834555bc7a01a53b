"""``outbox schedules``: who is e-mailed about each schedule's runs, and when."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from config.errors import InvalidInputError
from tasks.cli.common import JsonFlag, load_context
from tasks.cli.errors import EXIT_USAGE, fail
from tasks.message_input import describe_validation_error
from tasks.reports.rules import Notification

__all__ = ["schedules_app"]

schedules_app = typer.Typer(
    help="Who is e-mailed about each schedule's runs, and when.", no_args_is_help=True
)


def _recipient_lists(notify: list[str]) -> list[dict[str, Any]]:
    lists = []
    for given in notify:
        rule, equals, addresses = given.partition("=")
        if not equals or not addresses:
            fail(f"--notify {given!r}: give RULE=ADDRESS[,ADDRESS...]", EXIT_USAGE)
        lists.append({"rule": rule, "to": [a.strip() for a in addresses.split(",")]})
    return lists


@schedules_app.command("set")
def set_schedule(
    schedule_id: Annotated[str, typer.Argument(help="The schedule's id, as its runs name it.")],
    name: Annotated[str, typer.Option(help="The schedule's name, as people know it.")],
    notify: Annotated[
        list[str],
        typer.Option(
            help="RULE=ADDRESS[,ADDRESS...], repeatable. RULE: always, on_failure (any status "
            "but passed) or on_change (the status differs from the previous run's)."
        ),
    ],
) -> None:
    """Save who is e-mailed about the schedule's runs (replaces what was saved)."""
    try:
        notification = Notification.model_validate(
            {"name": name, "lists": _recipient_lists(notify)}
        )
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None
    load_context().schedules.save(schedule_id, notification)
    typer.echo(f"saved notification settings of schedule {schedule_id}")


@schedules_app.command("show")
def show_schedule(schedule_id: str, as_json: JsonFlag = False) -> None:
    """Show a schedule's recipient lists and rules."""
    notification = load_context().schedules.get(schedule_id)
    if as_json:
        typer.echo(notification.model_dump_json(indent=2))
        return
    typer.echo(f"{schedule_id}  {notification.name}")
    for recipients in notification.lists:
        typer.echo(f"  {recipients.rule.value:10} {', '.join(recipients.to)}")


@schedules_app.command("list")
def list_schedules(as_json: JsonFlag = False) -> None:
    """Every schedule with notification settings."""
    schedules = load_context().schedules.all()
    if as_json:
        documents = {i: n.model_dump(mode="json") for i, n in schedules.items()}
        typer.echo(json.dumps(documents, indent=2))
        return
    for schedule_id, notification in schedules.items():
        typer.echo(f"{schedule_id:24} {notification.name}  ({len(notification.lists)} lists)")


@schedules_app.command("delete")
def delete_schedule(schedule_id: str) -> None:
    """Forget a schedule's notification settings (and its last run's status)."""
    load_context().schedules.delete(schedule_id)
    typer.echo(f"deleted notification settings of schedule {schedule_id}")
