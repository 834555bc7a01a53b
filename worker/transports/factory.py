"""Builds the transport for a version of the mail settings."""

from __future__ import annotations

from dataclasses import dataclass

from config.mail_settings import OAuthSettings, SmtpSettings
from worker.errors import ConfigurationError
from worker.tls import TlsContexts
from worker.transports.base import Transport
from worker.transports.smtp import SmtpTransport


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """What every transport of a process shares, whatever the settings."""

    tls: TlsContexts
    smtp_timeout_seconds: float
    smtp_max_connections: int
    local_hostname: str


def create_transport(
    settings: SmtpSettings | OAuthSettings, options: TransportOptions
) -> Transport:
    if isinstance(settings, SmtpSettings):
        return SmtpTransport(
            settings,
            tls=options.tls,
            timeout=options.smtp_timeout_seconds,
            max_connections=options.smtp_max_connections,
            local_hostname=options.local_hostname,
        )
    raise ConfigurationError(
        "the OAuth (Microsoft Graph) protocol is not supported by this version of outbox yet; "
        "configure SMTP"
    )
