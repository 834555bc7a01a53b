"""``/api/settings/mail``: read, save and check the mail settings (administrators only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends
from pydantic_core import to_jsonable_python
from starlette.concurrency import run_in_threadpool

from api.auth import Admin, admin
from api.errors import answers
from api.services import ApiServices, services
from config.errors import DeliveryError, SecretMismatchError, SettingsNotConfiguredError
from config.mail_settings import SECRET_FIELDS, OAuthSettings, SmtpSettings
from config.provider_limits import GRAPH_LIMITS, provider_limits
from tasks.settings_checks import check_connection, send_test_email

__all__ = ["router"]

router = APIRouter(
    prefix="/api/settings/mail",
    tags=["mail settings"],
    dependencies=[Depends(admin)],
    responses=answers(401, 403, 503),
)
WITH_BODY = answers(400, 413, 422)

Services = Annotated[ApiServices, Depends(services)]
SettingsBody = Annotated[SmtpSettings | OAuthSettings, Body(discriminator="protocol")]


def _view(found: ApiServices) -> dict[str, Any]:
    store = found.context.settings_store
    view = store.public_view()
    if view is None:
        raise SettingsNotConfiguredError("mail settings are not configured yet")
    return {**view, "pause": store.pause()}


@router.get("", responses=answers(404))
def read_settings(found: Services) -> dict[str, Any]:
    """The saved settings: a secret shows only as ``password_set`` / ``client_secret_set``;
    ``pause`` is the sending account's pause after a provider's quota reply, or null."""
    return _view(found)


@router.put("", responses=WITH_BODY)
def save_settings(settings: SettingsBody, key: Admin, found: Services) -> dict[str, Any]:
    """Save a new version; without a secret the stored one (same protocol) is kept, but only
    while the fields it is bound to (server, port, TLS, username; instance, tenant, client ID,
    scope or API URL) are unchanged, else 422 naming the secret's field. The answer's
    ``warnings`` say what the administrator must know (an unverified certificate)."""
    found.context.settings_store.save(settings, by=key.name)
    return {**_view(found), "warnings": settings.warnings()}


@router.get("/defaults", responses=answers(422))
def defaults(
    protocol: Literal["smtp", "oauth"] = "smtp", server: str | None = None
) -> dict[str, Any]:
    """The values a new form starts with; the sending limits are those the provider publishes
    when the server (``server``, else the default) is a known one (Microsoft 365, Gmail, the
    Gmail SMTP relay), or Graph's for ``oauth``."""
    model = SmtpSettings if protocol == "smtp" else OAuthSettings
    values = {
        name: to_jsonable_python(field.default)
        for name, field in model.model_fields.items()
        if not field.is_required() and name not in SECRET_FIELDS
    }
    if protocol == "smtp" and server:
        values["server"] = server
    published = GRAPH_LIMITS if protocol == "oauth" else provider_limits(values["server"])
    if published is not None:
        values.update(published.model_dump())
    return values


async def _check(
    found: ApiServices, settings: SmtpSettings | OAuthSettings, *, test_email: bool
) -> dict[str, Any]:
    context = found.context
    try:
        resolved = await run_in_threadpool(context.settings_store.with_stored_secret, settings)
        if test_email:
            message = await send_test_email(
                resolved, context.transport_options, context.settings.message_id_domain
            )
        else:
            message = await check_connection(resolved, context.transport_options)
    except (DeliveryError, SecretMismatchError) as exc:
        return {"ok": False, "message": str(exc)}
    return {"ok": True, "message": message}


@router.post("/test-connection", responses=WITH_BODY)
async def test_connection(settings: SettingsBody, found: Services) -> dict[str, Any]:
    """Connect, secure and log in (SMTP) or acquire a token (OAuth) with the form's values,
    saved or not; a missing secret means the stored one, on the terms of Save (422 when the
    form would send it elsewhere)."""
    return await _check(found, settings, test_email=False)


@router.post("/test-email", responses=WITH_BODY)
async def test_email(settings: SettingsBody, found: Services) -> dict[str, Any]:
    """Send a short test e-mail to the from mailbox with the form's values, saved or not; a
    missing secret means the stored one, on the terms of Save."""
    return await _check(found, settings, test_email=True)


@router.get("/history")
def history(found: Services) -> list[dict[str, Any]]:
    """Who (the API key's name) changed which fields (never their values), and when."""
    return found.context.settings_store.history()
