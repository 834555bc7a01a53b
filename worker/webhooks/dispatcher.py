"""The webhook dispatcher: runs in every worker process, on its event loop, beside the
sweeper. It fans final outcomes out into webhook deliveries and sends those that are due.

Its requests have their own HTTP client and their own bound (``concurrency``), never the
e-mails' semaphore or connections: an endpoint that hangs holds one of its slots for at
most the timeout, and no e-mail waits for it. Every process takes due deliveries under a
lease (Redis' clock), so several processes share the work and one that dies mid-send lets
another take over once the lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import redis.asyncio as aioredis

from config.errors import SecretMismatchError
from config.secret_box import SecretBox
from worker.records import WEBHOOK_EVENTS_KEY, WEBHOOKS_KEY, decode_record, record_key
from worker.records.codec import as_text
from worker.webhooks.deliveries import (
    DELIVERY_PREFIX,
    DUE_KEY,
    FANOUT,
    FINISH,
    RECENT_KEY,
    TAKE,
    WebhookStatus,
    attempts_key,
    delivery_key,
)
from worker.webhooks.endpoints import Endpoint, decode_endpoints
from worker.webhooks.events import event_body, wants
from worker.webhooks.schedule import RETRY_DELAYS, delay_after
from worker.webhooks.signing import message_id, signed_headers

__all__ = ["TIMEOUT_SECONDS", "WebhookDispatcher", "webhook_client"]

log = logging.getLogger(__name__)

# The whole request, connecting included: a receiver should answer at once and work later.
TIMEOUT_SECONDS = 5.0
CONCURRENCY = 8
# How much of an answer is kept with its attempt: enough to read an error, never a page.
SNIPPET_BYTES = 512
SNIPPET_CHARS = 200
_EVENTS_PER_STEP = 100
USER_AGENT = "outbox-webhooks/1"
# A 429 or 503 may say when to come back (Retry-After, in seconds): heeded up to a day.
MAX_RETRY_AFTER_SECONDS = 86400.0
# 410 Gone: the receiver wants no more (the specification): this event is not sent again.
GONE = 410


def webhook_client(verify: ssl.SSLContext, concurrency: int = CONCURRENCY) -> httpx.AsyncClient:
    """The dispatcher's own client: certificates verified (the process's TLS context), no
    redirects followed (a 3xx is a failed attempt, as the specification advises), proxies
    and CA variables of the environment ignored, one connection per request in flight.

    Answers are asked for uncompressed: only their first bytes are kept, and a small gzip
    answer can inflate to gigabytes in the process that also sends the e-mails."""
    return httpx.AsyncClient(
        verify=verify,
        trust_env=False,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
        timeout=httpx.Timeout(TIMEOUT_SECONDS),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


class WebhookDispatcher:
    """Fans events out and sends what is due, at most ``concurrency`` requests at a time."""

    def __init__(
        self,
        client: aioredis.Redis,
        box: SecretBox,
        http: httpx.AsyncClient,
        *,
        retention_seconds: int,
        concurrency: int = CONCURRENCY,
        poll_seconds: float = 0.5,
        lease_seconds: float = 30.0,
        timeout_seconds: float = TIMEOUT_SECONDS,
        delays: Sequence[float] = RETRY_DELAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._box = box
        self._http = http
        self._retention_seconds = retention_seconds
        self._concurrency = concurrency
        self._poll_seconds = poll_seconds
        self._lease_seconds = lease_seconds
        self._timeout_seconds = timeout_seconds
        self._delays = tuple(delays)
        self._clock = clock  # webhook-timestamp: the receiver compares it with its clock
        self._fanout = client.register_script(FANOUT)
        self._take = client.register_script(TAKE)
        self._finish = client.register_script(FINISH)
        # Each request in flight, with the delivery and lease it is for.
        self._sending: dict[asyncio.Task[WebhookStatus | None], tuple[str, str]] = {}
        self._wake: asyncio.Event | None = None

    async def run_forever(self) -> None:
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                pause = await self.step()
            except Exception:  # Redis away: try again shortly, as the sweeper does
                log.warning("webhook dispatch failed", exc_info=True)
                pause = self._poll_seconds
            # A finished request wakes the loop early: its slot can take the next delivery.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def step(self) -> float:
        """Fan out the waiting events, start what is due; the seconds until looking again."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(WEBHOOK_EVENTS_KEY)
        pipe.zrange(DUE_KEY, 0, 0, withscores=True)
        pipe.time()
        events, earliest, now = await pipe.execute()
        if events:
            try:
                await self.fan_out()
            except Exception:  # e.g. an unreadable event: what is due is still sent
                log.warning("webhook fan-out failed", exc_info=True)
        free = self._concurrency - len(self._sending)
        if earliest and float(earliest[0][1]) <= _unix_seconds(now) + 0.001:
            if free <= 0:
                return self._poll_seconds  # a finished request wakes the loop sooner
            for msg_id, fields, token in await self.take(free):
                self._start(msg_id, fields, token)
        if events > _EVENTS_PER_STEP:
            return 0.0
        if earliest:
            due_in = float(earliest[0][1]) - _unix_seconds(now)
            return min(max(due_in, 0.05), self._poll_seconds)
        return self._poll_seconds

    async def fan_out(self) -> int:
        """Turn the oldest waiting events into deliveries; returns how many were created."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(WEBHOOK_EVENTS_KEY, 0, _EVENTS_PER_STEP - 1, withscores=True)
        pipe.hgetall(WEBHOOKS_KEY)
        waiting, raw_endpoints = await pipe.execute()
        if not waiting:
            return 0
        endpoints = decode_endpoints(raw_endpoints)
        members = [(as_text(member), float(score)) for member, score in waiting]
        pipe = self._redis.pipeline(transaction=False)
        for member, _ in members:
            pipe.hgetall(record_key(member.split(":", 1)[0]))
        records = await pipe.execute()
        created = 0
        for (member, final_at), fields in zip(members, records, strict=True):
            deliveries = self._deliveries_of(member, final_at, fields, endpoints)
            keys = [WEBHOOK_EVENTS_KEY, DUE_KEY, RECENT_KEY]
            args: list[str | int] = [member, self._retention_seconds]
            for msg_id, document in deliveries:
                keys.append(delivery_key(msg_id))
                args += [msg_id, json.dumps(document)]
            created += int(await self._fanout(keys=keys, args=args))
        return created

    def _deliveries_of(
        self,
        member: str,
        final_at: float,
        fields: dict[bytes, bytes],
        endpoints: list[Endpoint],
    ) -> list[tuple[str, dict[str, str]]]:
        """The deliveries of one event: none when its record is gone (purged) or unreadable,
        or no endpoint wants it."""
        try:
            delivery_id, status, attempts = member.split(":")
            if not fields:
                return []
            record = decode_record(delivery_id, fields)
        except (ValueError, KeyError, TypeError):
            log.warning("webhook event %r dropped: its record cannot be read", member[:80])
            return []
        chosen = [
            endpoint
            for endpoint in endpoints
            if wants(endpoint.events, status) and endpoint.receives(record.created_by)
        ]
        if not chosen:
            return []
        body = event_body(record, status, int(attempts), final_at).decode()
        return [
            (
                message_id(member, endpoint.id),
                {
                    "endpoint": endpoint.id,
                    "url": endpoint.url,
                    "type": status,
                    "delivery_id": delivery_id,
                    "body": body,
                },
            )
            for endpoint in chosen
        ]

    async def take(self, most: int) -> list[tuple[str, dict[str, str], str]]:
        """Up to ``most`` due deliveries, leased to this process: (msg id, fields, token)."""
        token = uuid.uuid4().hex
        reply = await self._take(
            keys=[DUE_KEY],
            args=[
                most,
                repr(self._lease_seconds),
                DELIVERY_PREFIX,
                token,
                len(self._delays) + 1,
                self._retention_seconds,
            ],
        )
        taken = []
        for msg_id, flat in reply[1]:
            fields = {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)}
            taken.append((as_text(msg_id), fields, token))
        return taken

    def _start(self, msg_id: str, fields: dict[str, str], token: str) -> None:
        task = asyncio.get_running_loop().create_task(self.send(msg_id, fields, token))
        self._sending[task] = (msg_id, token)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[WebhookStatus | None]) -> None:
        self._sending.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook delivery failed unexpectedly", exc_info=task.exception())
        if self._wake is not None:
            self._wake.set()

    async def send(self, msg_id: str, fields: dict[str, str], token: str) -> WebhookStatus | None:
        """One attempt at a leased delivery, recorded; the delivery's new status, or None when
        its lease had lapsed meanwhile (another process has taken it over)."""
        raw = await self._redis.hget(WEBHOOKS_KEY, fields.get("endpoint", ""))
        if raw is None:
            return await self._record(msg_id, token, None, WebhookStatus.FAILED, 0)
        number = int(fields.get("attempt_count") or 0) + 1
        try:
            [endpoint] = decode_endpoints({fields["endpoint"]: as_text(raw)})
            secret = self._box.decrypt(endpoint.secret_token)
        except (SecretMismatchError, ValueError, KeyError, TypeError) as exc:
            unsigned = {"number": number, "started_at": self._clock(), "duration_ms": 0}
            return await self._after(msg_id, token, {**unsigned, "error": _short(exc)})
        attempt = await self._post(endpoint.url, secret, msg_id, fields["body"].encode())
        return await self._after(msg_id, token, {"number": number, **attempt})

    async def _post(self, url: str, secret: str, msg_id: str, body: bytes) -> dict[str, Any]:
        """One signed request and what came of it; never raises but for cancellation, so
        every attempt is recorded with its reason."""
        started_at = self._clock()
        headers = signed_headers(secret, msg_id, int(started_at), body)
        began = time.monotonic()
        attempt: dict[str, Any] = {"started_at": started_at}
        try:
            async with asyncio.timeout(self._timeout_seconds):
                async with self._http.stream("POST", url, content=body, headers=headers) as answer:
                    attempt["status_code"] = answer.status_code
                    attempt["response"] = await _snippet(answer)
                    if answer.is_redirect:
                        where = answer.headers.get("location", "")[:SNIPPET_CHARS]
                        attempt["error"] = f"redirect to {where!r} not followed"
                    if (wait := _retry_after(answer.headers.get("retry-after"))) is not None:
                        attempt["retry_after"] = wait
        except TimeoutError:
            attempt["error"] = f"no answer within {self._timeout_seconds:g} s"
        except httpx.ConnectError as exc:
            attempt["error"] = f"could not connect: {_short(exc)}"
        except Exception as exc:  # an invalid URL, TLS, a protocol error: recorded as well
            attempt["error"] = f"{type(exc).__name__}: {_short(exc)}"
        attempt["duration_ms"] = round((time.monotonic() - began) * 1000, 1)
        return attempt

    async def _after(
        self, msg_id: str, token: str, attempt: dict[str, Any]
    ) -> WebhookStatus | None:
        code = attempt.get("status_code")
        if code is not None and 200 <= code < 300:
            return await self._record(msg_id, token, attempt, WebhookStatus.DELIVERED, 0)
        delay = None if code == GONE else delay_after(attempt["number"], self._delays)
        if delay is None:
            return await self._record(msg_id, token, attempt, WebhookStatus.FAILED, 0)
        delay = max(delay, attempt.get("retry_after", 0.0))
        return await self._record(msg_id, token, attempt, WebhookStatus.RETRYING, delay)

    async def _record(
        self,
        msg_id: str,
        token: str,
        attempt: dict[str, Any] | None,
        status: WebhookStatus,
        delay: float,
        result: str | None = None,
    ) -> WebhookStatus | None:
        if result is None:
            result = _result_of(attempt) if attempt is not None else "its endpoint was removed"
        applied = await self._finish(
            keys=[delivery_key(msg_id), attempts_key(msg_id), DUE_KEY],
            args=[
                msg_id,
                token,
                json.dumps(attempt) if attempt is not None else "",
                status.value,
                repr(delay),
                self._retention_seconds,
                result,
            ],
        )
        return status if applied else None

    async def aclose(self) -> None:
        """Stop the requests in flight and hand their deliveries back, due at once and not
        charged an attempt, so that another process sends them without waiting for the
        lease (if Redis cannot be told, the lease lapses and the attempt counts as lost)."""
        leases = list(self._sending.items())
        for task, _ in leases:
            task.cancel()
        await asyncio.gather(*(task for task, _ in leases), return_exceptions=True)
        for _, (msg_id, token) in leases:
            with contextlib.suppress(Exception):
                await self._record(
                    msg_id, token, None, WebhookStatus.RETRYING, 0, "the worker stopped"
                )


async def _snippet(response: httpx.Response) -> str:
    """The start of the answer, as text: what an operator needs to see why it failed."""
    kept = bytearray()
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= SNIPPET_BYTES:
            break
    text = bytes(kept[:SNIPPET_BYTES]).decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else " " for c in text).strip()
    return printable[:SNIPPET_CHARS]


def _short(error: Exception) -> str:
    return (str(error) or type(error).__name__)[:SNIPPET_CHARS]


def _retry_after(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not heeded), at most a day."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_SECONDS)


def _result_of(attempt: dict[str, Any]) -> str:
    """An attempt in a few words, as lists show it: "200", "500: upstream down", the error."""
    if "error" in attempt:
        code = attempt.get("status_code")
        return f"{code}: {attempt['error']}" if code is not None else str(attempt["error"])
    said = attempt.get("response") or ""
    return f"{attempt['status_code']}: {said}" if said else str(attempt["status_code"])


def _unix_seconds(time_reply: tuple[int, int]) -> float:
    seconds, micros = time_reply
    return seconds + micros / 1e6
