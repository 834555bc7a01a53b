"""``outbox settings``: show, save and check the mail settings."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import SecretStr, ValidationError

from config.errors import DeliveryError, InvalidInputError
from config.mail_settings import (
    DEFAULT_API_URL,
    DEFAULT_INSTANCE,
    DEFAULT_SMTP_SCOPE,
    DeliveryMode,
    OAuthSettings,
    SendingLimits,
    SmtpAuth,
    SmtpSettings,
    TlsMode,
)
from config.provider_limits import GRAPH_LIMITS, provider_limits
from tasks.cli.common import JsonFlag, load_context
from tasks.cli.errors import EXIT_USAGE, fail
from tasks.context import OutboxContext
from tasks.message_input import describe_validation_error
from tasks.settings_checks import check_connection, send_test_email

__all__ = ["settings_app"]

settings_app = typer.Typer(help="Show, change and check the mail settings.", no_args_is_help=True)
set_app = typer.Typer(help="Save new mail settings (a new version).", no_args_is_help=True)
settings_app.add_typer(set_app, name="set")


def _read_secret_from_stdin() -> str:
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        fail("no secret on standard input", EXIT_USAGE)
    return secret


def _operator() -> str:
    """Who saves, for the settings history: the CLI and the user running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no name for this uid (e.g. in a container)
        return "cli"


MaxMessagesPerMinute = Annotated[
    int | None,
    typer.Option(help="Sending limit: messages in any 60 seconds, for all workers together."),
]
MaxRecipientsPerDay = Annotated[
    int | None, typer.Option(help="Sending limit: recipients in any 24 hours.")
]
MaxRecipientsPerMessage = Annotated[
    int | None,
    typer.Option(help="More recipients go as several transactions of the same message."),
]

DeliveryModeOption = Annotated[
    DeliveryMode,
    typer.Option(
        "--delivery-mode",
        help="deliver; staging: capture (nothing is sent, every e-mail kept) or redirect "
        "(every e-mail goes only to --redirect-to).",
    ),
]
RedirectTo = Annotated[
    list[str] | None,
    typer.Option(
        "--redirect-to",
        metavar="ADDRESS",
        help="With --delivery-mode redirect: an address (repeat for more).",
    ),
]


def _mode_warning(view: dict[str, Any]) -> str | None:
    """What an operator must be told about the saved settings' delivery mode, or None when
    they deliver."""
    mode = view.get("delivery_mode", DeliveryMode.DELIVER.value)
    if mode == DeliveryMode.CAPTURE.value:
        return "delivery mode capture: nothing is sent; every e-mail is kept as captured"
    if mode == DeliveryMode.REDIRECT.value:
        to = ", ".join(view.get("redirect_to") or ())
        return f"delivery mode redirect: every e-mail goes only to {to}, not its recipients"
    return None


def _check_redirect(mode: DeliveryMode, redirect_to: list[str] | None) -> None:
    """On the command line, addresses given for nothing are a mistake worth saying (a form
    sends them with every mode, and the settings drop them)."""
    if redirect_to and mode is not DeliveryMode.REDIRECT:
        fail("--redirect-to is for --delivery-mode redirect", EXIT_USAGE)


def _save(context: OutboxContext, build: Callable[[], SmtpSettings | OAuthSettings]) -> None:
    try:
        settings = build()
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None
    version = context.settings_store.save(settings, by=_operator())
    typer.echo(f"saved mail settings version {version} ({settings.protocol})")
    for warning in settings.warnings():
        typer.echo(f"warning: {warning}", err=True)
    staging = _mode_warning(
        settings.model_dump(mode="json", include={"delivery_mode", "redirect_to"})
    )
    if staging is not None:
        typer.echo(f"warning: {staging}", err=True)
    published = (
        GRAPH_LIMITS if isinstance(settings, OAuthSettings) else provider_limits(settings.server)
    )
    if published is not None and settings.limits == SendingLimits():
        given = {k: v for k, v in published.model_dump().items() if v is not None}
        options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
        typer.echo(f"note: no sending limits are set; this provider publishes {options}", err=True)


# The options of `outbox settings set smtp`, named here so that its signature reads as the
# interface; "oauth2:" marks those of --auth oauth2 (the token's).
SmtpFromMailbox = Annotated[str, typer.Option(help="Sender address; test e-mails go here.")]
SmtpServer = Annotated[str, typer.Option(help="SMTP server host name or IP.")]
SmtpPort = Annotated[int, typer.Option(help="SMTP port.")]
SmtpUsername = Annotated[str | None, typer.Option(help="Login name; none: no login.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
SmtpTls = Annotated[TlsMode, typer.Option(help="auto: 465 implicit, else STARTTLS if offered.")]
AcceptAnyCertificate = Annotated[
    bool,
    typer.Option(
        "--accept-any-certificate/--verify-certificate",
        help="Accept invalid TLS certificates (off by default).",
    ),
]
SmtpAuthOption = Annotated[
    SmtpAuth, typer.Option(help="password, or oauth2 (AUTH XOAUTH2, e.g. Microsoft 365).")
]
SmtpTenant = Annotated[str | None, typer.Option(help="oauth2: directory (tenant) ID.")]
SmtpClientId = Annotated[str | None, typer.Option(help="oauth2: application (client) ID.")]
SmtpClientSecretStdin = Annotated[
    bool,
    typer.Option("--client-secret-stdin", help="oauth2: read the client secret from stdin."),
]
SmtpInstance = Annotated[str, typer.Option(help="oauth2: identity platform URL.")]
SmtpScope = Annotated[str, typer.Option(help="oauth2: the token's scope.")]


@set_app.command("smtp")
def settings_set_smtp(
    from_mailbox: SmtpFromMailbox,
    server: SmtpServer = "localhost",
    port: SmtpPort = 587,
    username: SmtpUsername = None,
    password_stdin: PasswordStdin = False,
    tls: SmtpTls = TlsMode.AUTO,
    accept_any_certificate: AcceptAnyCertificate = False,
    auth: SmtpAuthOption = SmtpAuth.PASSWORD,
    tenant: SmtpTenant = None,
    client_id: SmtpClientId = None,
    client_secret_stdin: SmtpClientSecretStdin = False,
    instance: SmtpInstance = DEFAULT_INSTANCE,
    scope: SmtpScope = DEFAULT_SMTP_SCOPE,
    max_messages_per_minute: MaxMessagesPerMinute = None,
    max_recipients_per_day: MaxRecipientsPerDay = None,
    max_recipients_per_message: MaxRecipientsPerMessage = None,
    delivery_mode: DeliveryModeOption = DeliveryMode.DELIVER,
    redirect_to: RedirectTo = None,
) -> None:
    """Send through an SMTP server. Without --password-stdin (or, with --auth oauth2,
    --client-secret-stdin) the stored secret is kept, as long as the server, port, TLS
    settings and username (with oauth2: the instance, tenant, client ID and scope) are
    unchanged; otherwise it must be given again."""
    context = load_context()
    _check_redirect(delivery_mode, redirect_to)
    password, client_secret = _smtp_secrets(auth, password_stdin, client_secret_stdin)
    _save(
        context,
        lambda: SmtpSettings(
            server=server,
            port=port,
            from_mailbox=from_mailbox,
            username=username,
            password=password,
            tls=tls,
            accept_any_certificate=accept_any_certificate,
            auth=auth,
            tenant=tenant,
            client_id=client_id,
            client_secret=client_secret,
            instance=instance,
            scope=scope,
            max_messages_per_minute=max_messages_per_minute,
            max_recipients_per_day=max_recipients_per_day,
            max_recipients_per_message=max_recipients_per_message,
            delivery_mode=delivery_mode,
            redirect_to=tuple(redirect_to or ()),
        ),
    )


def _smtp_secrets(
    auth: SmtpAuth, password_stdin: bool, client_secret_stdin: bool
) -> tuple[SecretStr | None, SecretStr | None]:
    """The password and the client secret given on standard input (None: keep the stored
    one). Only one secret is read, and its option must be the one ``auth`` uses: a password
    saved as a client secret would fail only at the first delivery."""
    if password_stdin and client_secret_stdin:
        fail("give --password-stdin or --client-secret-stdin, not both", EXIT_USAGE)
    secret = _read_secret_from_stdin() if password_stdin or client_secret_stdin else None
    oauth2 = auth is SmtpAuth.OAUTH2
    if secret and oauth2 != client_secret_stdin:
        wanted = "--client-secret-stdin" if oauth2 else "--password-stdin"
        fail(f"with --auth {auth.value} the secret is read with {wanted}", EXIT_USAGE)
    password = SecretStr(secret) if secret and not oauth2 else None
    client_secret = SecretStr(secret) if secret and oauth2 else None
    return password, client_secret


@set_app.command("oauth")
def settings_set_oauth(
    from_mailbox: Annotated[str, typer.Option(help="Mailbox to send as.")],
    tenant: Annotated[str, typer.Option(help="Directory (tenant) ID.")],
    client_id: Annotated[str, typer.Option(help="Application (client) ID.")],
    client_secret_stdin: Annotated[
        bool, typer.Option("--client-secret-stdin", help="Read the client secret from stdin.")
    ] = False,
    instance: Annotated[str, typer.Option(help="Identity platform URL.")] = DEFAULT_INSTANCE,
    api_url: Annotated[str, typer.Option(help="Microsoft Graph URL.")] = DEFAULT_API_URL,
    max_messages_per_minute: MaxMessagesPerMinute = None,
    max_recipients_per_day: MaxRecipientsPerDay = None,
    max_recipients_per_message: MaxRecipientsPerMessage = None,
    delivery_mode: DeliveryModeOption = DeliveryMode.DELIVER,
    redirect_to: RedirectTo = None,
) -> None:
    """Send through Microsoft Graph. Without --client-secret-stdin the stored secret is kept,
    as long as the instance, API URL, tenant and client ID are unchanged."""
    context = load_context()
    _check_redirect(delivery_mode, redirect_to)
    secret = _read_secret_from_stdin() if client_secret_stdin else None
    _save(
        context,
        lambda: OAuthSettings(
            from_mailbox=from_mailbox,
            tenant=tenant,
            client_id=client_id,
            client_secret=SecretStr(secret) if secret else None,
            instance=instance,
            api_url=api_url,
            max_messages_per_minute=max_messages_per_minute,
            max_recipients_per_day=max_recipients_per_day,
            max_recipients_per_message=max_recipients_per_message,
            delivery_mode=delivery_mode,
            redirect_to=tuple(redirect_to or ()),
        ),
    )


@settings_app.command("show")
def settings_show(as_json: JsonFlag = False) -> None:
    """Show the saved settings; secrets are masked."""
    view = load_context().settings_store.public_view()
    if view is None:
        fail("mail settings are not configured")
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    for name, value in view.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or None
        typer.echo(f"{name:24} {value if value is not None else '-'}")
    staging = _mode_warning(view)
    if staging is not None:
        typer.echo(f"warning: {staging}", err=True)


@settings_app.command("test-connection")
def settings_test_connection() -> None:
    """Connect, secure and log in with the saved settings; exit 1 with the reason on failure."""
    context = load_context()
    settings = context.settings_store.require().settings
    try:
        outcome = asyncio.run(check_connection(settings, context.transport_options))
    except DeliveryError as exc:
        fail(f"connection test failed: {exc.reason}")
    typer.echo(f"connection OK: {outcome}")


@settings_app.command("send-test")
def settings_send_test() -> None:
    """Send a test e-mail to the from mailbox; exit 1 with the reason on failure."""
    context = load_context()
    settings = context.settings_store.require().settings
    try:
        outcome = asyncio.run(
            send_test_email(settings, context.transport_options, context.settings.message_id_domain)
        )
    except DeliveryError as exc:
        fail(f"test e-mail not sent: {exc.reason}")
    typer.echo(outcome)
