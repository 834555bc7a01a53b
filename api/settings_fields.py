"""The Mail Settings form's fields, in one table that the page and its script both read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from annotated_types import Ge, Le
from markupsafe import Markup
from pydantic import BaseModel

from config.mail_settings import (
    DeliveryMode,
    OAuthSettings,
    SendingLimits,
    SmtpAuth,
    SmtpSettings,
    TlsMode,
)

__all__ = [
    "MODELS",
    "SETTINGS_FORM",
    "STORED_PLACEHOLDER",
    "Field",
    "Group",
    "Kind",
    "Row",
    "fields_of",
]

# A secret's placeholder while one is stored: the page never gets the secret itself.
STORED_PLACEHOLDER = "saved; leave empty to keep"
# The models whose fields the form edits, by protocol: the select's values.
MODELS: dict[str, type[SmtpSettings | OAuthSettings]] = {
    "smtp": SmtpSettings,
    "oauth": OAuthSettings,
}


class Kind(StrEnum):
    """How a field is edited: each kind is one macro of templates/fields.html."""

    TEXT = "text"
    MAILBOX = "mailbox"  # one e-mail address (inputmode email)
    URL = "url"
    NUMBER = "number"  # an integer; empty is none
    SECRET = "secret"  # noqa: S105  a kind of field: never filled in, empty keeps the stored
    CHECKBOX = "checkbox"
    SELECT = "select"
    ADDRESSES = "addresses"  # several e-mail addresses in one line, sent as a list


@dataclass(frozen=True, slots=True)
class Field:
    """One control: ``name`` is the model's field (and the control's name), ``id`` its id."""

    name: str
    label: str
    kind: Kind
    prefix: str = ""  # for a name that two groups of the form have (the first one has none)
    hint: str | Markup = ""
    placeholder: str = ""
    options: tuple[tuple[str, str], ...] = ()  # (value, label) of a select
    width: str = ""  # the box's class for its layout: "grow", "port", "protocol", "limit"
    minimum: int | None = None
    maximum: int | None = None
    box_id: str = ""  # the box's id, for a script that shows or hides the whole field
    hidden: bool = False

    @property
    def part(self) -> Literal["field"]:
        """How templates/fields.html tells the parts of the form apart."""
        return "field"

    @property
    def id(self) -> str:
        return self.prefix + self.name


@dataclass(frozen=True, slots=True)
class Row:
    """Fields side by side (they wrap in a narrow window)."""

    fields: tuple[Field, ...]

    @property
    def part(self) -> Literal["row"]:
        """How templates/fields.html tells the parts of the form apart."""
        return "row"


@dataclass(frozen=True, slots=True)
class Group:
    """A fieldset. With ``protocol`` or ``auth`` it holds the fields of that choice only, and
    the script shows it while that is chosen; ``key`` names it for the script."""

    legend: str
    parts: tuple[Field | Row | Group, ...]
    key: str = ""
    protocol: str = ""
    auth: str = ""
    hidden: bool = False
    legend_shown: bool = False
    hint: str = ""  # one hint of every field in the group, after them

    @property
    def part(self) -> Literal["group"]:
        """How templates/fields.html tells the parts of the form apart."""
        return "group"


def _options(labels: dict[str, str], enum: type[StrEnum]) -> tuple[tuple[str, str], ...]:
    """A select's options, one per value of the model's enum, in the enum's order."""
    missing = {str(value) for value in enum} ^ set(labels)
    if missing:
        raise ValueError(f"{enum.__name__}: no option, or no such value: {sorted(missing)}")
    return tuple((str(value), labels[value]) for value in enum)


def _number(model: type[BaseModel], name: str, label: str, width: str) -> Field:
    """A number field, with the minimum and maximum that the model validates."""
    rules = model.model_fields[name].metadata
    low = next((rule.ge for rule in rules if isinstance(rule, Ge)), None)
    high = next((rule.le for rule in rules if isinstance(rule, Le)), None)
    return Field(
        name,
        label,
        Kind.NUMBER,
        width=width,
        minimum=low if isinstance(low, int) else None,
        maximum=high if isinstance(high, int) else None,
    )


def _limit(name: str, label: str) -> Field:
    return _number(SendingLimits, name, label, "limit")


# SMTP's OAuth 2.0 fields share their names with the OAuth protocol's: their ids start with
# "oauth2_".
_SMTP_OAUTH2 = Group(
    "OAuth 2.0",
    auth=SmtpAuth.OAUTH2,
    hidden=True,
    parts=(
        Field(
            "username",
            "Username",
            Kind.MAILBOX,
            prefix="oauth2_",
            hint="The mailbox that logs in; empty: the from mailbox",
        ),
        Field("tenant", "Tenant", Kind.TEXT, prefix="oauth2_"),
        Field("client_id", "Client ID", Kind.TEXT, prefix="oauth2_"),
        Field("client_secret", "Client Secret", Kind.SECRET, prefix="oauth2_"),
        Field("instance", "Instance", Kind.URL, prefix="oauth2_"),
        Field("scope", "Scope", Kind.TEXT, prefix="oauth2_"),
    ),
)

_SMTP = Group(
    "SMTP",
    protocol="smtp",
    parts=(
        Row(
            (
                Field(
                    "server",
                    "SMTP Server",
                    Kind.TEXT,
                    width="grow",
                    placeholder="host name or IP address",
                ),
                _number(SmtpSettings, "port", "SMTP Port", "port"),
            )
        ),
        Field(
            "tls",
            "TLS mode",
            Kind.SELECT,
            options=_options(
                {
                    TlsMode.AUTO: "Auto",
                    TlsMode.STARTTLS: "STARTTLS",
                    TlsMode.IMPLICIT: "Implicit TLS",
                    TlsMode.NONE: "None (no encryption)",
                },
                TlsMode,
            ),
            hint="Auto: implicit TLS on port 465, otherwise STARTTLS when the server offers it",
        ),
        Field(
            "accept_any_certificate",
            "Accept any certificate",
            Kind.CHECKBOX,
            hint="Ignore invalid certificates of the SMTP server (not recommended)",
        ),
        Field(
            "auth",
            "Authentication",
            Kind.SELECT,
            options=_options(
                {SmtpAuth.PASSWORD: "Password", SmtpAuth.OAUTH2: "OAuth 2.0"}, SmtpAuth
            ),
        ),
        Group(
            "Password",
            auth=SmtpAuth.PASSWORD,
            parts=(
                Row(
                    (
                        Field(
                            "username",
                            "SMTP Username",
                            Kind.TEXT,
                            width="grow",
                            hint="Leave empty for no login",
                        ),
                        Field("password", "SMTP Password", Kind.SECRET, width="grow"),
                    )
                ),
            ),
        ),
        _SMTP_OAUTH2,
    ),
)

_OAUTH = Group(
    "OAuth",
    protocol="oauth",
    hidden=True,
    parts=(
        Field("instance", "Instance", Kind.URL),
        Field("api_url", "API URL", Kind.URL),
        Field("tenant", "Tenant", Kind.TEXT),
        Field("client_id", "Client ID", Kind.TEXT),
        Field("client_secret", "Client Secret", Kind.SECRET),
    ),
)

# Both protocols have them; one set of fields shows the chosen protocol's values.
_LIMITS = Group(
    "Sending limits",
    key="limits",
    legend_shown=True,
    hint="Held for all workers together; empty: none",
    parts=(
        _limit("max_messages_per_minute", "Max messages per minute"),
        _limit("max_recipients_per_day", "Max recipients per day"),
        _limit("max_recipients_per_message", "Max recipients per message"),
    ),
)

# Both protocols have them: staging installations keep or redirect every e-mail.
_DELIVERY = Group(
    "Delivery",
    key="delivery",
    parts=(
        Field(
            "delivery_mode",
            "Delivery mode",
            Kind.SELECT,
            options=_options(
                {
                    DeliveryMode.DELIVER: "Deliver",
                    DeliveryMode.CAPTURE: "Capture (staging: nothing is sent)",
                    DeliveryMode.REDIRECT: "Redirect (staging: everything goes to…)",
                },
                DeliveryMode,
            ),
            hint="Capture keeps each e-mail to read on the Deliveries page; Redirect sends it "
            "only to the addresses below",
        ),
        Field(
            "redirect_to",
            "Redirect to",
            Kind.ADDRESSES,
            box_id="redirect-field",
            hidden=True,
            placeholder="qa@example.com, dev@example.com",
            hint=Markup(
                "Comma-separated addresses; the original recipients go in the "
                "<code>X-Outbox-Original-To</code> header"
            ),
        ),
    ),
)

# The whole form, top to bottom.
SETTINGS_FORM: tuple[Row | Group, ...] = (
    Row(
        (
            Field(
                "protocol",
                "Protocol",
                Kind.SELECT,
                width="protocol",
                options=tuple(zip(MODELS, ("SMTP", "OAuth"), strict=True)),
            ),
            Field(
                "from_mailbox",
                "From Mailbox",
                Kind.MAILBOX,
                width="grow",
                placeholder="robot@example.com",
            ),
        )
    ),
    _SMTP,
    _OAUTH,
    _LIMITS,
    _DELIVERY,
)


def fields_of(
    parts: tuple[Field | Row | Group, ...], *, protocol: str, auth: str | None = None
) -> Iterator[Field]:
    """The fields the form sends for this protocol and (SMTP) authentication; with no
    ``auth``, those of every authentication."""
    for part in parts:
        if isinstance(part, Field):
            yield part
        elif isinstance(part, Row):
            yield from part.fields
        elif part.protocol in ("", protocol) and (auth is None or part.auth in ("", auth)):
            yield from fields_of(part.parts, protocol=protocol, auth=auth)
