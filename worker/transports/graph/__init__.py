"""Microsoft Graph: the transport and everything of its protocol (message JSON, its error
answers), behind the one ``Transport`` protocol of ``worker.transports.base``; its tokens come
from ``worker.transports.identity``, shared with SMTP's XOAUTH2."""

from worker.transports.graph.transport import GraphTransport

__all__ = ["GraphTransport"]
