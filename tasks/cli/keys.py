"""``outbox keys``: API keys for the HTTP API (create, list, revoke); stored hashed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from config.api_keys import ApiKeyStore, Role
from tasks.cli.common import JsonFlag, load_context, local_time

__all__ = ["keys_app"]

keys_app = typer.Typer(help="API keys for the HTTP API and the page.", no_args_is_help=True)


def _store() -> ApiKeyStore:
    return ApiKeyStore(load_context().redis)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who uses it, e.g. scheduler or ann.")],
    role: Annotated[Role, typer.Option(help="admin: everything; producer: send and read.")],
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it; it is shown only this once."""
    key = _store().create(name, role)
    if as_json:
        typer.echo(json.dumps({"name": name, "role": role.value, "key": key}))
    else:
        typer.echo(key)


@keys_app.command("list")
def list_keys(as_json: JsonFlag = False) -> None:
    """Every key's name, role, creation and last use; never the key."""
    infos = _store().list()
    if as_json:
        rows = [
            {
                "name": i.name,
                "role": i.role.value,
                "created_at": i.created_at,
                "last_used_at": i.last_used_at,
            }
            for i in infos
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for info in infos:
        used = local_time(info.last_used_at) if info.last_used_at else "never used"
        typer.echo(
            f"{info.name:24} {info.role.value:9} created {local_time(info.created_at)}  {used}"
        )


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: it stops working at once, and so do its page sessions."""
    _store().revoke(name)
    typer.echo(f"revoked {name}")
