"""The mail settings an administrator configures: SMTP or OAuth (Microsoft Graph), validated."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config.addresses import mailbox_address
from config.header_text import single_line

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_INSTANCE",
    "DEFAULT_SMTP_SCOPE",
    "MAIL_SETTINGS_ADAPTER",
    "MAX_REDIRECT_ADDRESSES",
    "SECRET_FIELDS",
    "DeliveryMode",
    "DeliveryModeSettings",
    "MailSettings",
    "OAuthSettings",
    "SendingLimits",
    "SmtpAuth",
    "SmtpSettings",
    "TlsMode",
    "secret_field",
]

DEFAULT_INSTANCE = "https://login.microsoftonline.com/"
DEFAULT_API_URL = "https://graph.microsoft.com/"
# Exchange Online's resource for SMTP AUTH with OAuth 2.0 client credentials ("Authenticate an
# IMAP, POP or SMTP connection using OAuth", learn.microsoft.com).
DEFAULT_SMTP_SCOPE = "https://outlook.office365.com/.default"
# Every field that may hold a secret; stored only encrypted, never shown.
SECRET_FIELDS = ("password", "client_secret")
# Redirect sends every e-mail to all of these in one message: a team's inboxes, not a list.
MAX_REDIRECT_ADDRESSES = 50

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# No backslash anywhere: some URL parsers read it as a slash, which would move the host.
_HTTPS_URL = re.compile(r"^https://(?P<authority>[^\s/?#\\]+)(/[^\s?#\\]*)?$")
# A directory (tenant) ID, a verified domain name or "organizations": one path segment of the
# identity platform's URL, nothing that could add a path, a query or a host to it.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _no_userinfo(authority: str) -> None:
    """Refuse ``user:password@`` before a URL's host: ``https://login.microsoftonline.com@
    evil.example/`` reads like Microsoft's address but sends the secret to evil.example."""
    if "@" in authority:
        raise ValueError(
            "must not contain a user name or password (an @ before the host): the requests "
            "would go to the host after the @"
        )


def _https_url(value: str) -> str:
    match = _HTTPS_URL.match(value)
    if match is None:
        raise ValueError("must be an https:// URL")
    _no_userinfo(match["authority"])
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not one
    except ValueError:
        raise ValueError("must be an https:// URL with a valid host and port") from None
    _host_name_or_ip(parts.hostname or "")
    return value if value.endswith("/") else value + "/"


def _scope(value: str) -> str:
    value = single_line(value).strip()
    if not value or " " in value:
        raise ValueError("must be one scope, e.g. https://outlook.office365.com/.default")
    if "://" in value:  # a resource's URI, e.g. https://outlook.office365.com/.default
        _no_userinfo(value.split("://", 1)[1].split("/", 1)[0])
    return value


def _tenant(value: str | None) -> str | None:
    if value is not None and not _TENANT.match(value):
        raise ValueError(
            "must be a directory (tenant) ID or a domain name, e.g. contoso.onmicrosoft.com"
        )
    return value


class SmtpAuth(StrEnum):
    """How outbox logs in to the SMTP server."""

    PASSWORD = "password"  # noqa: S105  AUTH PLAIN/LOGIN with the username and password
    OAUTH2 = "oauth2"  # AUTH XOAUTH2 with a client-credentials token (Microsoft 365)


class SendingLimits(BaseModel):
    """How fast the sending account may send, held for every worker together (empty: none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_messages_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    max_recipients_per_day: int | None = Field(default=None, ge=1, le=100_000_000)
    max_recipients_per_message: int | None = Field(default=None, ge=1, le=100_000)

    _blank = field_validator(
        "max_messages_per_minute",
        "max_recipients_per_day",
        "max_recipients_per_message",
        mode="before",
    )(_empty_is_none)

    @property
    def limits(self) -> SendingLimits:
        """Only the limits, whatever else the settings hold."""
        return SendingLimits(
            max_messages_per_minute=self.max_messages_per_minute,
            max_recipients_per_day=self.max_recipients_per_day,
            max_recipients_per_message=self.max_recipients_per_message,
        )

    @property
    def has_rate_limits(self) -> bool:
        return self.max_messages_per_minute is not None or self.max_recipients_per_day is not None


class DeliveryMode(StrEnum):
    """What the workers do with an e-mail: send it, or, for staging, keep or redirect it."""

    DELIVER = "deliver"  # to its recipients
    CAPTURE = "capture"  # to nobody: recorded ``captured`` with its MIME message
    REDIRECT = "redirect"  # only to ``redirect_to``, the original recipients in a header


RedirectAddress = Annotated[str, AfterValidator(mailbox_address)]


class DeliveryModeSettings(SendingLimits):
    """The sending limits and the delivery mode, which both protocols have."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delivery_mode: DeliveryMode = DeliveryMode.DELIVER
    redirect_to: tuple[RedirectAddress, ...] = Field(
        default=(), max_length=MAX_REDIRECT_ADDRESSES, validate_default=True
    )

    @field_validator("redirect_to")
    @classmethod
    def _only_and_always_with_redirect(
        cls, value: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        """Required with redirect; with another mode the addresses mean nothing, so they are
        dropped rather than kept to surprise whoever switches to redirect later."""
        if info.data.get("delivery_mode") is not DeliveryMode.REDIRECT:
            return ()
        if not value:
            raise ValueError("required with delivery mode redirect: the addresses to send to")
        return tuple(dict.fromkeys(value))

    @property
    def redirects(self) -> bool:
        return self.delivery_mode is DeliveryMode.REDIRECT

    def redirected_recipients(self, pending: int) -> int:
        """How many envelope recipients a message to ``pending`` recipients is sent to."""
        return len(self.redirect_to) if self.redirects else pending


class SmtpSettings(DeliveryModeSettings):
    """Send through an SMTP server, logging in with a password or with OAuth 2.0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Literal["smtp"] = "smtp"
    server: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    from_mailbox: str
    username: str | None = None
    password: SecretStr | None = None
    accept_any_certificate: bool = False
    tls: TlsMode = TlsMode.AUTO
    auth: SmtpAuth = SmtpAuth.PASSWORD
    # With auth oauth2: the app registration of the Microsoft identity platform.
    tenant: str | None = Field(default=None, validate_default=True)
    client_id: str | None = Field(default=None, validate_default=True)
    client_secret: SecretStr | None = None
    instance: str = DEFAULT_INSTANCE
    scope: str = DEFAULT_SMTP_SCOPE

    _blank = field_validator(
        "username", "password", "tenant", "client_id", "client_secret", mode="before"
    )(_empty_is_none)
    _server = field_validator("server")(_host_name_or_ip)
    _from = field_validator("from_mailbox")(mailbox_address)
    _single_lines = field_validator("username", "tenant", "client_id")(_single_line)
    _tenant = field_validator("tenant")(_tenant)
    _instance = field_validator("instance")(_https_url)
    _scope = field_validator("scope")(_scope)

    @model_validator(mode="before")
    @classmethod
    def _only_the_chosen_secret(cls, data: Any) -> Any:
        """A form sends every field: the secret of the authentication not chosen is dropped,
        so it is neither stored nor mistaken for the one in use."""
        if isinstance(data, Mapping):
            unused = "password" if data.get("auth") == SmtpAuth.OAUTH2 else "client_secret"
            return {key: value for key, value in data.items() if key != unused}
        return data

    @field_validator("tenant", "client_id")
    @classmethod
    def _oauth2_needs_the_app(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("auth") is SmtpAuth.OAUTH2:
            raise ValueError("required with auth oauth2")
        return value

    @field_validator("redirect_to")
    @classmethod
    def _redirect_fits_the_limits(
        cls, value: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        """Every redirected message goes to all of ``redirect_to`` at once: as transactions
        of max_recipients_per_message, that must fit in one minute's max_messages_per_minute,
        or no message could ever go."""
        per_message = info.data.get("max_recipients_per_message")
        per_minute = info.data.get("max_messages_per_minute")
        redirect = info.data.get("delivery_mode") is DeliveryMode.REDIRECT
        if redirect and per_message and per_minute and -(-len(value) // per_message) > per_minute:
            raise ValueError(
                f"{len(value)} addresses take {-(-len(value) // per_message)} transactions of "
                f"{per_message} recipients, more than max messages per minute ({per_minute})"
            )
        return value

    @property
    def uses_implicit_tls(self) -> bool:
        return self.tls is TlsMode.IMPLICIT or (self.tls is TlsMode.AUTO and self.port == 465)

    @property
    def login_mailbox(self) -> str | None:
        """Who logs in: the username; with OAuth 2.0 it defaults to the from mailbox."""
        if self.auth is SmtpAuth.OAUTH2:
            return self.username or self.from_mailbox
        return self.username

    @property
    def secret_field(self) -> str:
        return secret_field({"protocol": self.protocol, "auth": self.auth})

    def secret(self) -> SecretStr | None:
        secret: SecretStr | None = getattr(self, self.secret_field)
        return secret

    @property
    def secret_bound_to(self) -> tuple[str, ...]:
        """The fields that decide where the secret goes or whose it is: the password goes to
        the server (as the TLS settings protect it) for the username; the client secret goes
        to the identity platform for the app, and the token got with it to the server."""
        where = ("server", "port", "tls", "accept_any_certificate")
        if self.auth is SmtpAuth.OAUTH2:
            return (*where, "instance", "tenant", "client_id", "scope")
        return (*where, "username")

    @property
    def sending_account(self) -> str:
        """The account a provider's limits belong to: server and the mailbox that logs in."""
        return f"smtp:{self.server.lower()}:{self.login_mailbox or self.from_mailbox}"

    def transactions(self, recipients: int) -> int:
        """SMTP transactions a message to ``recipients`` takes (max_recipients_per_message)."""
        return -(-recipients // (self.max_recipients_per_message or recipients or 1))

    def warnings(self) -> list[str]:
        """What an administrator must know about these settings before relying on them."""
        if not self.accept_any_certificate or self.tls is TlsMode.NONE:
            return []
        return [
            f"accept any certificate is on: the certificate of {self.server}:{self.port} is "
            "not verified, so anyone on the network path can pose as the server and read "
            "the password and the mail"
        ]


class OAuthSettings(DeliveryModeSettings):
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
    _tenant = field_validator("tenant")(_tenant)

    @property
    def secret_field(self) -> str:
        return "client_secret"

    def secret(self) -> SecretStr | None:
        return self.client_secret

    @property
    def secret_bound_to(self) -> tuple[str, ...]:
        """The fields that decide where the secret goes or whose it is: the client secret goes
        to the identity platform for the app, and the token got with it to the API."""
        return ("instance", "tenant", "client_id", "api_url")

    @property
    def sending_account(self) -> str:
        """The account a provider's limits belong to: the Graph service and the mailbox."""
        return f"graph:{self.api_url}:{self.from_mailbox}"

    def transactions(self, recipients: int) -> int:
        """Graph sends a message in one request, whatever its recipients."""
        return 1

    def warnings(self) -> list[str]:
        return []


MailSettings = Annotated[SmtpSettings | OAuthSettings, Field(discriminator="protocol")]
MAIL_SETTINGS_ADAPTER: TypeAdapter[SmtpSettings | OAuthSettings] = TypeAdapter(MailSettings)


def secret_field(document: Mapping[str, Any]) -> str:
    """The field that holds the secret in settings of this protocol and authentication, given
    as their stored JSON or a form's fields."""
    if document.get("protocol") == "oauth" or document.get("auth") == SmtpAuth.OAUTH2:
        return "client_secret"
    return "password"
