"""Microsoft Graph transport: sendMail, or a draft with upload sessions for large attachments."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from config.errors import DeliveryError, TransientError
from config.mail_settings import OAuthSettings
from worker.concurrency import ConcurrencyLimit
from worker.message import Attachment, OutgoingMessage
from worker.records import RecipientOutcome, RecipientState
from worker.scrubbing import scrub_error
from worker.transports.base import BeforeData, SendResult, go_ahead
from worker.transports.graph.errors import graph_error
from worker.transports.graph.message import GraphMessage, build_graph_message
from worker.transports.http_failures import transport_error
from worker.transports.identity import TokenSource

__all__ = ["UPLOAD_CHUNK_BYTES", "GraphTransport"]

# Upload chunks: at most 4 MB as Graph requires, and a multiple of 320 KiB as upload
# sessions prefer (3.75 MiB).
UPLOAD_CHUNK_BYTES = 12 * 320 * 1024


class GraphTransport:
    """Sends as one mailbox through Graph, never more than ``mailbox_concurrency`` at a time."""

    def __init__(
        self,
        settings: OAuthSettings,
        *,
        tokens: TokenSource,
        http: httpx.AsyncClient,
        limit: ConcurrencyLimit,
        save_to_sent_items: bool,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._http = http
        # Graph allows 4 concurrent requests per mailbox; more only earns 429s.
        self._limit = limit
        self._save_to_sent_items = save_to_sent_items
        self._user_url = f"{settings.api_url}v1.0/users/{quote(settings.from_mailbox, safe='@')}"

    async def send(
        self,
        message: OutgoingMessage,
        recipients: Sequence[str],
        date: float,
        before_data: BeforeData = go_ahead,
    ) -> SendResult:
        graph = build_graph_message(message, recipients)
        if graph.large_attachments:
            await self._send_draft(graph, before_data)
        else:
            payload = {"message": graph.json, "saveToSentItems": self._save_to_sent_items}
            before_data()
            await self._call("POST", f"{self._user_url}/sendMail", json=payload)
        return SendResult(
            tuple(RecipientOutcome(r, RecipientState.SENT, 202, "Accepted") for r in recipients),
            code=202,
            reply="Accepted",
        )

    async def verify(self) -> None:
        await self._tokens.token()

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP clients belong to the process."""

    async def _send_draft(self, graph: GraphMessage, before_data: BeforeData) -> None:
        draft = await self._call("POST", f"{self._user_url}/messages", json=graph.json)
        draft_url = f"{self._user_url}/messages/{quote(str(draft.json()['id']), safe='')}"
        try:
            for attachment in graph.large_attachments:
                await self._upload(draft_url, attachment)
            before_data()  # a stopped attempt's draft is deleted below, never sent
            await self._call("POST", f"{draft_url}/send")
        except Exception:
            # Leave no half-built draft behind; the next attempt builds a new one.
            with contextlib.suppress(DeliveryError):
                await self._call("DELETE", draft_url)
            raise

    async def _upload(self, draft_url: str, attachment: Attachment) -> None:
        size = len(attachment.content)
        session = await self._call(
            "POST",
            f"{draft_url}/attachments/createUploadSession",
            json={
                "AttachmentItem": {
                    "attachmentType": "file",
                    "name": attachment.name,
                    "size": size,
                    "contentType": attachment.content_type,
                }
            },
        )
        upload_url = str(session.json()["uploadUrl"])
        for start in range(0, size, UPLOAD_CHUNK_BYTES):
            chunk = attachment.content[start : start + UPLOAD_CHUNK_BYTES]
            headers = {
                "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{size}",
                "Content-Type": "application/octet-stream",
            }
            # The upload URL carries its own credential; Graph refuses an Authorization header.
            await self._request("PUT", upload_url, content=chunk, headers=headers)

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """An authorized Graph request; a 401 refreshes the token once and tries again."""
        # The token first: waiting for the identity platform must not hold a mailbox slot.
        token = await self._tokens.token()
        response = await self._request_in_slot(method, url, token, **kwargs)
        if response.status_code == 401:
            token = await self._tokens.refresh()
            response = await self._request_in_slot(method, url, token, **kwargs)
        if response.is_error:
            # Graph, or a proxy before it, may quote the request; the token is kept out.
            raise scrub_error(graph_error(response, time.time()), (token,))
        return response

    async def _request_in_slot(
        self, method: str, url: str, token: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            async with self._limit.slot():
                return await self._request(method, url, token=token, **kwargs)
        except TimeoutError as exc:
            raise TransientError(
                f"a request to {self._settings.api_url} outlived its mailbox slot"
            ) from exc

    async def _request(
        self, method: str, url: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(exc, self._settings.api_url) from exc
        if token is None and response.is_error:
            raise graph_error(response, time.time())
        return response
