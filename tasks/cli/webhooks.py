"""``outbox webhooks``: endpoints that receive signed delivery events (add, list, remove),
and what was sent to them (deliveries)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from config.api_keys import ApiKeyStore
from tasks.cli.common import JsonFlag, load_context, local_time
from tasks.context import OutboxContext
from worker.webhooks import EVENT_TYPES, Endpoint, EndpointStore, WebhookDeliveries

__all__ = ["endpoint_store", "webhooks_app"]

webhooks_app = typer.Typer(
    help="Webhook endpoints: signed events when a delivery is sent, fails or is cancelled.",
    no_args_is_help=True,
)


def endpoint_store(context: OutboxContext) -> EndpointStore:
    """The endpoints, as the CLI reaches them (an endpoint is tied only to an existing key)."""
    keys = ApiKeyStore(context.redis)
    return EndpointStore(
        context.redis, context.secret_box, key_exists=lambda name: keys.holder(name) is not None
    )


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="https://..., or http:// to a loopback host.")],
    events: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated, of {','.join(EVENT_TYPES)}; unset: all of them."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Only the deliveries this API key (its name) created."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint and print its signing secret; it is shown only this once."""
    endpoint, secret = endpoint_store(load_context()).add(url, events, key)
    if as_json:
        typer.echo(json.dumps({**endpoint.as_json(), "secret": secret}))
        return
    typer.echo(_line(endpoint))
    typer.echo(f"signing secret (shown only this once): {secret}")


@webhooks_app.command("list")
def list_endpoints(as_json: JsonFlag = False) -> None:
    """Every endpoint's id, URL, events, key and creation; never its secret."""
    endpoints = endpoint_store(load_context()).list()
    if as_json:
        typer.echo(json.dumps([endpoint.as_json() for endpoint in endpoints], indent=2))
        return
    for endpoint in endpoints:
        typer.echo(_line(endpoint))


def _line(endpoint: Endpoint) -> str:
    events = ",".join(endpoint.events)
    tied = f"  key {endpoint.key}" if endpoint.key else ""
    return (
        f"{endpoint.id}  {endpoint.url}  {events}{tied}  created {local_time(endpoint.created_at)}"
    )


@webhooks_app.command("remove")
def remove(endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (ep_...).")]) -> None:
    """Remove an endpoint: nothing more is sent to it."""
    endpoint_store(load_context()).remove(endpoint_id)
    typer.echo(f"removed {endpoint_id}")


@webhooks_app.command("deliveries")
def deliveries(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """The recent webhook deliveries: status, attempts and each attempt's answer."""
    found = WebhookDeliveries(load_context().redis).recent(limit)
    if as_json:
        typer.echo(json.dumps([delivery.as_json() for delivery in found], indent=2))
        return
    for delivery in found:
        line = (
            f"{delivery.id}  {delivery.type:14} {delivery.status.value:9} "
            f"attempts {delivery.attempt_count}  {delivery.endpoint}  "
            f"delivery {delivery.delivery_id}  {local_time(delivery.updated_at)}"
        )
        if delivery.last_result:
            line += f"  last: {delivery.last_result}"
        typer.echo(line)
