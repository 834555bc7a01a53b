"""``/api/webhooks``: webhook endpoints and their deliveries, for administrators (as
``outbox webhooks`` does)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor

from api.auth import Admin
from api.errors import answers
from api.services import ApiServices, services
from worker.webhooks import EVENT_TYPES, EndpointStore, WebhookDeliveries
from worker.webhooks.endpoints import ENDPOINT_ID

__all__ = ["router"]

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], responses=answers(401, 403, 503))
WITH_BODY = answers(400, 413, 422)

Services = Annotated[ApiServices, Depends(services)]


class _EndpointIdConvertor(Convertor[str]):
    """Matches only an endpoint's id (``ep_`` and 16 hex digits) in the path, so that
    ``/api/webhooks/deliveries`` is never taken for one: ``DELETE`` on it answers 405, and
    ``DELETE /api/webhooks/<anything else>`` 404."""

    regex = ENDPOINT_ID.pattern.removeprefix("^").removesuffix("$")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("webhook_endpoint", _EndpointIdConvertor())


def _endpoints(found: Services) -> EndpointStore:
    keys = found.keys
    return EndpointStore(
        found.context.redis,
        found.context.secret_box,
        key_exists=lambda name: keys.holder(name) is not None,
    )


Endpoints = Annotated[EndpointStore, Depends(_endpoints)]


class NewEndpointInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048, description="https://..., or http:// to a loopback host (127.0.0.1)."
    )
    events: list[str] | None = Field(
        default=None,
        max_length=len(EVENT_TYPES),
        description=f"Of {', '.join(EVENT_TYPES)}; left out: all of them. `sent` also "
        "receives `captured` (the staging capture mode).",
    )
    key: str | None = Field(
        default=None,
        max_length=64,
        description="An API key's name: only the deliveries it created.",
    )


@router.get("")
def list_endpoints(_: Admin, endpoints: Endpoints) -> list[dict[str, Any]]:
    """Every endpoint's id, URL, events, key and creation; never its secret."""
    return [endpoint.as_json() for endpoint in endpoints.list()]


@router.post("", status_code=status.HTTP_201_CREATED, responses=WITH_BODY)
def create_endpoint(new: NewEndpointInput, _: Admin, endpoints: Endpoints) -> dict[str, Any]:
    """Register an endpoint; the answer's ``secret`` (``whsec_...``) is shown this once and
    stored encrypted."""
    endpoint, secret = endpoints.add(new.url, new.events, new.key)
    return {**endpoint.as_json(), "secret": secret}


@router.delete(
    "/{endpoint_id:webhook_endpoint}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=answers(404),
)
def remove_endpoint(endpoint_id: str, _: Admin, endpoints: Endpoints) -> None:
    """Remove an endpoint: nothing more is sent to it."""
    endpoints.remove(endpoint_id)


@router.get("/deliveries", responses=answers(422))
def list_deliveries(
    _: Admin, found: Services, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """The recent webhook deliveries, newest first: status, attempts, each attempt's answer
    (HTTP status or error, duration, the start of the body)."""
    return [delivery.as_json() for delivery in WebhookDeliveries(found.context.redis).recent(limit)]
