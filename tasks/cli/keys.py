"""``outbox keys``: API keys for the HTTP API (create, update, list, revoke); stored hashed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from config.api_keys import ApiKeyStore, KeyInfo, KeyLimits, Role
from tasks.cli.common import JsonFlag, load_context, local_time

__all__ = ["keys_app"]

keys_app = typer.Typer(help="API keys for the HTTP API and the page.", no_args_is_help=True)


def _store() -> ApiKeyStore:
    return ApiKeyStore(load_context().redis)


MaxPerMinute = Annotated[
    int | None,
    typer.Option(min=0, help="E-mails this key may send per minute over the API; 0: no limit."),
]
MaxPerDay = Annotated[
    int | None,
    typer.Option(min=0, help="E-mails this key may send per day over the API; 0: no limit."),
]
AllowDomain = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-domain",
        help="A recipient domain this key may send to (repeat for more); unset: any domain.",
    ),
]


def _no_limit_if_zero(value: int | None) -> int | None:
    return value or None


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who uses it, e.g. scheduler or ann.")],
    role: Annotated[Role, typer.Option(help="admin: everything; producer: send and read.")],
    max_per_minute: MaxPerMinute = None,
    max_per_day: MaxPerDay = None,
    allow_domain: AllowDomain = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key and print it; it is shown only this once."""
    limits = KeyLimits.of(
        max_per_minute=_no_limit_if_zero(max_per_minute),
        max_per_day=_no_limit_if_zero(max_per_day),
        allowed_domains=allow_domain or [],
    )
    store = _store()
    key = store.create(name, role, limits)
    if as_json:
        typer.echo(json.dumps({**store.info(name).as_json(), "key": key}))
    else:
        typer.echo(key)


@keys_app.command("update")
def update(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    max_per_minute: MaxPerMinute = None,
    max_per_day: MaxPerDay = None,
    allow_domain: AllowDomain = None,
    any_domain: Annotated[
        bool, typer.Option("--any-domain", help="Remove the domain allow-list.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Change a key's limits; what is not given stays as it is. The key stays valid."""
    changes: dict[str, object] = {}
    if max_per_minute is not None:
        changes["max_per_minute"] = _no_limit_if_zero(max_per_minute)
    if max_per_day is not None:
        changes["max_per_day"] = _no_limit_if_zero(max_per_day)
    if allow_domain:
        changes["allowed_domains"] = allow_domain
    if any_domain:
        changes["allowed_domains"] = []
    info = _store().update(name, **changes)
    typer.echo(json.dumps(info.as_json()) if as_json else _line(info))


@keys_app.command("list")
def list_keys(as_json: JsonFlag = False) -> None:
    """Every key's name, role, limits, creation and last use; never the key."""
    infos = _store().list()
    if as_json:
        typer.echo(json.dumps([info.as_json() for info in infos], indent=2))
        return
    for info in infos:
        typer.echo(_line(info))


def _line(info: KeyInfo) -> str:
    used = local_time(info.last_used_at) if info.last_used_at else "never used"
    line = f"{info.name:24} {info.role.value:9} created {local_time(info.created_at)}  {used}"
    limits = info.limits
    if limits.max_per_minute:
        line += f"  {limits.max_per_minute}/min"
    if limits.max_per_day:
        line += f"  {limits.max_per_day}/day"
    if limits.allowed_domains:
        line += f"  to {', '.join(limits.allowed_domains)}"
    return line


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: it stops working at once, and so do its page sessions."""
    _store().revoke(name)
    typer.echo(f"revoked {name}")
