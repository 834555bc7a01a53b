"""The mail settings an administrator configures: SMTP or OAuth (Microsoft Graph), validated."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from config.addresses import mailbox_address
from config.header_text import single_line

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_INSTANCE",
    "MAIL_SETTINGS_ADAPTER",
    "SECRET_FIELD",
    "MailSettings",
    "OAuthSettings",
    "SmtpSettings",
    "TlsMode",
]

DEFAULT_INSTANCE = "https://login.microsoftonline.com/"
DEFAULT_API_URL = "https://graph.microsoft.com/"

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class TlsMode(StrEnum):
    """How the SMTP connection is secured."""

    AUTO = "auto"  # port 465: implicit TLS; otherwise STARTTLS when the server offers it
    STARTTLS = "starttls"  # STARTTLS required
    IMPLICIT = "implicit"  # TLS from the first byte (SMTPS)
    NONE = "none"  # plain text, never upgraded


def _host_name_or_ip(value: str) -> str:
    value = value.strip()
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if not value or len(value) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError("must be a host name or an IP address")
    return value


def _single_line(value: str | None) -> str | None:
    return single_line(value) if value is not None else None


def _empty_is_none(value: object) -> object:
    """A form's empty username or secret field means "none" (for a secret: keep the stored)."""
    return None if value == "" else value


def _https_url(value: str) -> str:
    if not re.match(r"^https://[^\s/?#]+(/[^\s?#]*)?$", value):
        raise ValueError("must be an https:// URL")
    return value if value.endswith("/") else value + "/"


class SmtpSettings(BaseModel):
    """Send through an SMTP server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal["smtp"] = "smtp"
    server: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    from_mailbox: str
    username: str | None = None
    password: SecretStr | None = None
    accept_any_certificate: bool = False
    tls: TlsMode = TlsMode.AUTO

    _blank = field_validator("username", "password", mode="before")(_empty_is_none)
    _server = field_validator("server")(_host_name_or_ip)
    _from = field_validator("from_mailbox")(mailbox_address)
    _username = field_validator("username")(_single_line)

    @property
    def uses_implicit_tls(self) -> bool:
        return self.tls is TlsMode.IMPLICIT or (self.tls is TlsMode.AUTO and self.port == 465)

    def secret(self) -> SecretStr | None:
        return self.password

    def warnings(self) -> list[str]:
        """What an administrator must know about these settings before relying on them."""
        if not self.accept_any_certificate or self.tls is TlsMode.NONE:
            return []
        return [
            f"accept any certificate is on: the certificate of {self.server}:{self.port} is "
            "not verified, so anyone on the network path can pose as the server and read "
            "the password and the mail"
        ]


class OAuthSettings(BaseModel):
    """Send through Microsoft Graph with OAuth 2.0 client credentials."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal["oauth"] = "oauth"
    from_mailbox: str
    instance: str = DEFAULT_INSTANCE
    api_url: str = DEFAULT_API_URL
    tenant: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None

    _blank = field_validator("client_secret", mode="before")(_empty_is_none)
    _from = field_validator("from_mailbox")(mailbox_address)
    _urls = field_validator("instance", "api_url")(_https_url)
    _ids = field_validator("tenant", "client_id")(_single_line)

    def secret(self) -> SecretStr | None:
        return self.client_secret

    def warnings(self) -> list[str]:
        return []


MailSettings = Annotated[SmtpSettings | OAuthSettings, Field(discriminator="protocol")]
MAIL_SETTINGS_ADAPTER: TypeAdapter[SmtpSettings | OAuthSettings] = TypeAdapter(MailSettings)

SECRET_FIELD = {"smtp": "password", "oauth": "client_secret"}
