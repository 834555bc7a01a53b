"""``/api/keys``: API keys and their limits, for administrators (as ``outbox keys`` does)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Admin
from api.errors import answers
from api.services import ApiServices, services
from config.api_keys import KeyLimits, Role

__all__ = ["router"]

router = APIRouter(prefix="/api/keys", tags=["keys"], responses=answers(401, 403, 503))
WITH_BODY = answers(400, 413, 422)

Services = Annotated[ApiServices, Depends(services)]
KeyName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# Strict: JSON's true is not the number 1.
PerPeriod = Annotated[int | None, Field(strict=True, ge=1, le=10_000_000)]
Domains = Annotated[list[str], Field(max_length=1000)]


class KeyLimitsInput(BaseModel):
    """A key's limits; a field left out keeps its value, ``null`` removes that limit."""

    model_config = ConfigDict(extra="forbid")

    max_per_minute: PerPeriod = None
    max_per_day: PerPeriod = None
    allowed_domains: Domains = Field(
        default_factory=list, description="Recipient domains; empty allows every domain."
    )


class NewKeyInput(KeyLimitsInput):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    role: Role


@router.get("")
def list_keys(_: Admin, found: Services) -> list[dict[str, Any]]:
    """Every key's name, role, limits, creation and last use; never the key."""
    return [info.as_json() for info in found.keys.list()]


@router.post("", status_code=status.HTTP_201_CREATED, responses={**WITH_BODY, **answers(409)})
def create_key(new: NewKeyInput, _: Admin, found: Services) -> dict[str, Any]:
    """Create a key; the answer's ``key`` is shown this once and stored only as a hash."""
    limits = KeyLimits.of(
        max_per_minute=new.max_per_minute,
        max_per_day=new.max_per_day,
        allowed_domains=new.allowed_domains,
    )
    key = found.keys.create(new.name, new.role, limits)
    return {**found.keys.info(new.name).as_json(), "key": key}


@router.patch("/{name}", responses={**WITH_BODY, **answers(404)})
def update_key(name: KeyName, changes: KeyLimitsInput, _: Admin, found: Services) -> dict[str, Any]:
    """Change a key's limits; the key and its sessions stay valid."""
    return found.keys.update(name, **changes.model_dump(exclude_unset=True)).as_json()


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=answers(404, 422))
def revoke_key(name: KeyName, _: Admin, found: Services) -> None:
    """Revoke a key: it stops working at once, and so do the page sessions it signed in."""
    found.keys.revoke(name)
