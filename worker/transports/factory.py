"""Builds the transport for a version of the mail settings, and the HTTP clients they share."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis

from config.mail_settings import DeliveryMode, OAuthSettings, SmtpAuth, SmtpSettings
from config.process import ProcessSettings
from config.redis_keys import GRAPH_SLOTS
from worker.concurrency import ConcurrencyLimit, LocalLimit, SharedLimit
from worker.tls import TlsContexts, build_tls_contexts
from worker.transports.base import Transport
from worker.transports.capture import CaptureTransport
from worker.transports.graph import GraphTransport
from worker.transports.identity import ClientCredentials, TokenSource
from worker.transports.redirect import RedirectTransport
from worker.transports.smtp import SessionOptions, SmtpTransport

__all__ = ["HttpClients", "TransportOptions", "create_transport", "transport_options"]


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """What every transport of a process shares, whatever the settings."""

    tls: TlsContexts
    smtp_timeout_seconds: float
    smtp_max_connections: int
    local_hostname: str
    graph_timeout_seconds: float = 30.0
    graph_max_concurrency: int = 4
    graph_save_to_sent_items: bool = False


def transport_options(settings: ProcessSettings) -> TransportOptions:
    """The options of a process, from its settings; the TLS contexts are built here, once."""
    return TransportOptions(
        tls=build_tls_contexts(settings.ca_bundle),
        smtp_timeout_seconds=settings.smtp_timeout_seconds,
        smtp_max_connections=settings.smtp_max_connections,
        local_hostname=settings.message_id_domain,
        graph_timeout_seconds=settings.graph_timeout_seconds,
        graph_max_concurrency=settings.graph_max_concurrency,
        graph_save_to_sent_items=settings.graph_save_to_sent_items,
    )


@dataclass(frozen=True, slots=True)
class HttpClients:
    """One client for Graph (async) and one for the identity platform (msal is synchronous).

    Both trust exactly the process's TLS context (system CAs plus OUTBOX_CA_BUNDLE) and ignore
    the environment (trust_env=False), so another library's CA-bundle variable cannot
    silently replace that trust.
    """

    graph: httpx.AsyncClient
    identity: httpx.Client

    @classmethod
    def build(cls, options: TransportOptions) -> HttpClients:
        timeout = httpx.Timeout(options.graph_timeout_seconds)
        return cls(
            graph=httpx.AsyncClient(
                verify=options.tls.verified,
                trust_env=False,
                timeout=timeout,
                limits=httpx.Limits(max_keepalive_connections=options.graph_max_concurrency * 2),
            ),
            identity=httpx.Client(verify=options.tls.verified, trust_env=False, timeout=timeout),
        )

    async def aclose(self) -> None:
        await self.graph.aclose()
        self.identity.close()


def create_transport(
    settings: SmtpSettings | OAuthSettings,
    options: TransportOptions,
    http: HttpClients,
    shared_state: aioredis.Redis | None = None,
) -> Transport:
    """The transport for ``settings``; with ``shared_state`` (the worker's Redis), limits that
    hold per mailbox are shared by every worker process, not counted per process. In the
    staging delivery modes the protocol's transport is wrapped: ``capture`` keeps every
    message instead of sending it, ``redirect`` sends it to the redirect addresses only."""
    transport = _protocol_transport(settings, options, http, shared_state)
    match settings.delivery_mode:
        case DeliveryMode.CAPTURE:
            return CaptureTransport(transport, settings.from_mailbox)
        case DeliveryMode.REDIRECT:
            return RedirectTransport(transport, settings.redirect_to)
    return transport


def _protocol_transport(
    settings: SmtpSettings | OAuthSettings,
    options: TransportOptions,
    http: HttpClients,
    shared_state: aioredis.Redis | None,
) -> Transport:
    if isinstance(settings, SmtpSettings):
        oauth2 = settings.auth is SmtpAuth.OAUTH2
        return SmtpTransport(
            settings,
            SessionOptions(
                tls=options.tls,
                timeout=options.smtp_timeout_seconds,
                local_hostname=options.local_hostname,
            ),
            max_connections=options.smtp_max_connections,
            # One token per process and settings version, shared by its connections.
            tokens=(
                TokenSource(ClientCredentials.for_smtp(settings), http.identity) if oauth2 else None
            ),
        )
    limit: ConcurrencyLimit = LocalLimit(options.graph_max_concurrency)
    if shared_state is not None:
        limit = SharedLimit(
            shared_state,
            GRAPH_SLOTS.name(mailbox=settings.from_mailbox),
            options.graph_max_concurrency,
            # A slot outlives the longest request it guards, so only a lost worker frees it late.
            lease_seconds=2 * options.graph_timeout_seconds,
        )
    return GraphTransport(
        settings,
        tokens=TokenSource(ClientCredentials.for_graph(settings), http.identity),
        http=http.graph,
        limit=limit,
        save_to_sent_items=options.graph_save_to_sent_items,
    )
