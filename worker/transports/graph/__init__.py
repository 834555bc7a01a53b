"""Microsoft Graph: the transport and everything of its protocol (message JSON, HTTP error
translation, client-credentials tokens), behind the one ``Transport`` protocol of
``worker.transports.base``."""

from worker.transports.graph.tokens import ClientCredentials, TokenSource
from worker.transports.graph.transport import GraphTransport

__all__ = ["ClientCredentials", "GraphTransport", "TokenSource"]
