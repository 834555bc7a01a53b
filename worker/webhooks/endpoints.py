"""The registered endpoints, in the ``outbox:webhooks`` hash: id -> JSON (URL, events, the API
key it is tied to, created at, the signing secret encrypted with the ``SecretBox``).

While the hash exists the scripts that make a status final mark the outcome for the
dispatcher; removing the last endpoint deletes the hash (Redis does, on the last HDEL), so
no events pile up for nobody.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from config.errors import InvalidInputError, NotFoundError
from config.secret_box import SecretBox
from worker.records import WEBHOOKS_KEY
from worker.records.codec import as_text
from worker.webhooks.events import EventType, parse_events
from worker.webhooks.signing import new_secret
from worker.webhooks.urls import check_url

__all__ = ["ENDPOINT_ID", "Endpoint", "EndpointStore", "decode_endpoints"]

ENDPOINT_ID = re.compile(r"^ep_[0-9a-f]{16}$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One receiver; ``secret_token`` is its signing secret as stored: encrypted."""

    id: str
    url: str
    events: tuple[EventType, ...]
    key: str | None  # only deliveries created by this API key; None: every delivery
    created_at: float
    secret_token: str

    def receives(self, created_by: str | None) -> bool:
        return self.key is None or self.key == created_by

    def as_json(self) -> dict[str, Any]:
        """What operators see: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": [event.value for event in self.events],
            "key": self.key,
            "created_at": self.created_at,
        }


def _decode(endpoint_id: str, raw: str | bytes) -> Endpoint:
    document = json.loads(raw)
    return Endpoint(
        id=endpoint_id,
        url=document["url"],
        events=tuple(EventType(event) for event in document["events"]),
        key=document.get("key"),
        created_at=float(document["created_at"]),
        secret_token=document["secret"],
    )


def decode_endpoints(fields: Mapping[Any, Any]) -> list[Endpoint]:
    """The endpoints of the hash as ``HGETALL`` returns it (bytes or text), oldest first."""
    endpoints = [_decode(as_text(name), raw) for name, raw in fields.items()]
    return sorted(endpoints, key=lambda endpoint: (endpoint.created_at, endpoint.id))


class EndpointStore:
    """Adds, lists and removes endpoints (for ``outbox webhooks`` and ``/api/webhooks``)."""

    def __init__(
        self, client: redis.Redis, box: SecretBox, *, key_exists: Callable[[str], bool]
    ) -> None:
        self._redis = client
        self._box = box
        self._key_exists = key_exists

    def add(
        self, url: str, events: Iterable[str] | str | None = None, key: str | None = None
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its signing secret: returned this once, stored encrypted."""
        checked_url = check_url(url)
        chosen = parse_events(events)
        if key is not None and not self._key_exists(key):
            raise InvalidInputError(
                f"no API key named {key!r} (`outbox keys list` shows them)", field="key"
            )
        secret = new_secret()
        endpoint = Endpoint(
            id=f"ep_{secrets.token_hex(8)}",
            url=checked_url,
            events=chosen,
            key=key,
            created_at=time.time(),
            secret_token=self._box.encrypt(secret),
        )
        document = {
            "url": endpoint.url,
            "events": [event.value for event in endpoint.events],
            "key": endpoint.key,
            "created_at": endpoint.created_at,
            "secret": endpoint.secret_token,
        }
        self._redis.hset(WEBHOOKS_KEY, endpoint.id, json.dumps(document))
        return endpoint, secret

    def list(self) -> list[Endpoint]:
        return decode_endpoints(self._redis.hgetall(WEBHOOKS_KEY))

    def rotate_secrets(self) -> int:
        """Encrypt every endpoint's secret again with the first key (``outbox secrets
        rotate``); how many. An endpoint added or removed meanwhile makes it read again."""
        rotated = 0

        def rotate(pipe: Pipeline) -> None:
            nonlocal rotated
            documents = {
                as_text(name): json.loads(raw) for name, raw in pipe.hgetall(WEBHOOKS_KEY).items()
            }
            for document in documents.values():
                document["secret"] = self._box.rotate(document["secret"])
            rotated = len(documents)
            if documents:
                pipe.multi()
                pipe.hset(
                    WEBHOOKS_KEY,
                    mapping={name: json.dumps(doc) for name, doc in documents.items()},
                )

        # redis-py's optimistic transaction: WATCH, read, MULTI/EXEC, again on a conflict.
        self._redis.transaction(rotate, WEBHOOKS_KEY)
        return rotated

    def remove(self, endpoint_id: str) -> None:
        """Forget the endpoint: nothing more is sent to it, its pending deliveries fail."""
        if not self._redis.hdel(WEBHOOKS_KEY, endpoint_id):
            raise NotFoundError(f"no webhook endpoint {endpoint_id!r}")
