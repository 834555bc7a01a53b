"""OAuth 2.0 client-credentials tokens from the Microsoft identity platform (msal), one
application per settings version: for Graph and for SMTP's XOAUTH2 login alike, so they sit
beside both packages and each stands alone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import msal
from pydantic import SecretStr

from config.errors import ConfigurationError, DeliveryError, TransientError
from config.mail_settings import OAuthSettings, SmtpSettings
from worker.scrubbing import scrub
from worker.transports.http_failures import transport_error

__all__ = ["ClientCredentials", "TokenSource"]


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """An app registration of the Microsoft identity platform and the resource it asks for."""

    instance: str
    tenant: str
    client_id: str
    client_secret: SecretStr | None
    scope: str

    @classmethod
    def for_graph(cls, settings: OAuthSettings) -> ClientCredentials:
        return cls(
            instance=settings.instance,
            tenant=settings.tenant,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            scope=f"{settings.api_url}.default",
        )

    @classmethod
    def for_smtp(cls, settings: SmtpSettings) -> ClientCredentials:
        """The SMTP settings' app (auth oauth2); an unset tenant or client ID is a settings
        error that the model refuses already."""
        return cls(
            instance=settings.instance,
            tenant=settings.tenant or "",
            client_id=settings.client_id or "",
            client_secret=settings.client_secret,
            scope=settings.scope,
        )


# Identity platform errors that mean "the settings are wrong", not "try again later".
_CONFIGURATION_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "invalid_tenant",
        "invalid_scope",
        "invalid_request",
        "invalid_grant",
        "unsupported_grant_type",
    }
)


class TokenSource:
    """Access tokens (for Graph, or for SMTP AUTH XOAUTH2); msal's in-memory cache serves
    them until they expire.

    msal is synchronous: its calls run in a worker thread, one at a time (a lock), so that
    concurrent sends at start-up make one token request, not one each.
    """

    def __init__(self, credentials: ClientCredentials, http_client: httpx.Client) -> None:
        self._settings = credentials
        self._http_client = http_client
        self._application: msal.ConfidentialClientApplication | None = None
        self._lock = asyncio.Lock()
        self._scope = credentials.scope

    async def token(self) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._acquire)

    async def refresh(self) -> str:
        """Drop the cached token (the server said it is no longer valid) and get a new one."""
        async with self._lock:
            if self._application is not None:
                self._application.remove_tokens_for_client()
            return await asyncio.to_thread(self._acquire)

    def _acquire(self) -> str:
        try:
            result: dict[str, Any] = self._app().acquire_token_for_client(scopes=[self._scope])
        except httpx.TransportError as exc:
            raise transport_error(exc, self._settings.instance) from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            # A gateway's 5xx page or other non-JSON answer: the platform is having trouble.
            raise TransientError(
                f"the identity platform at {self._settings.instance} answered unusably: "
                f"{type(exc).__name__}"
            ) from exc
        token = result.get("access_token")
        if isinstance(token, str):
            return token
        raise self._token_error(result)

    def _app(self) -> msal.ConfidentialClientApplication:
        if self._application is None:
            secret = self._settings.client_secret
            if secret is None:
                raise ConfigurationError("the OAuth 2.0 settings have no client secret")
            try:
                # Reads the authority's OpenID configuration: the first network call.
                self._application = msal.ConfidentialClientApplication(
                    self._settings.client_id,
                    client_credential=secret.get_secret_value(),
                    authority=f"{self._settings.instance}{self._settings.tenant}",
                    instance_discovery=False,
                    http_client=self._http_client,
                )
            except httpx.TransportError as exc:
                raise transport_error(exc, self._settings.instance) from exc
            except httpx.HTTPStatusError as exc:
                raise TransientError(
                    f"the identity platform at {self._settings.instance} answered "
                    f"{exc.response.status_code} to the OpenID configuration request"
                ) from exc
            except ValueError as exc:
                raise ConfigurationError(
                    f"identity platform: tenant {self._settings.tenant!r} unusable: "
                    f"{self._scrub(str(exc))}"
                ) from None
        return self._application

    def _token_error(self, result: dict[str, Any]) -> DeliveryError:
        error = str(result.get("error", "unknown_error"))
        lines = str(result.get("error_description") or "").splitlines()
        description = self._scrub(lines[0] if lines else "")
        codes = result.get("error_codes") or []
        code = int(codes[0]) if codes and str(codes[0]).isdigit() else None
        reason = f"identity platform refused the token request: {error}: {description}"
        if error in _CONFIGURATION_ERRORS:
            return ConfigurationError(reason, code=code, reply=f"{error}: {description}")
        return TransientError(reason, code=code, reply=f"{error}: {description}")

    def _scrub(self, text: str) -> str:
        # The identity platform does not echo secrets, but a proxy or a future message might.
        secret = self._settings.client_secret
        return scrub(text, [secret.get_secret_value()] if secret is not None else [])
