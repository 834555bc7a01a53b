"""Every Redis key outbox and its broker keep: pattern, type, lifetime and owner, one registry.

Every module that names a key takes the name from here (``RedisKey.prefix`` or
``RedisKey.name``), docs/redis-keys.md is this registry rendered (``markdown_table``; a test
keeps the two equal), and a test runs a full cycle of outbox (settings, keys, sessions,
sends, retries, reports, webhooks, limits) and fails on any key in Redis that no entry
describes. The registry sits on the ground floor (``config``) because every layer keeps keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "KEY_PREFIX",
    "REGISTRY",
    "KeyType",
    "RedisKey",
    "describing",
    "markdown_table",
]

KEY_PREFIX = "outbox:"
# A placeholder names one part of a key; it holds no ':' unless its name ends in '*'
# (an idempotency key, a Celery host name: chosen by others, they may hold anything).
_PLACEHOLDER = re.compile(r"\{(\w+)(\*?)\}")


class KeyType(StrEnum):
    """The Redis data type of a key, as ``TYPE`` answers."""

    STRING = "string"
    HASH = "hash"
    LIST = "list"
    SET = "set"
    ZSET = "zset"


@dataclass(frozen=True, slots=True)
class RedisKey:
    """One kind of key: its ``pattern`` ("outbox:msg:{id}"), ``type``, what it ``holds``, how
    long it ``lives`` and the module that ``owner``\\s it (writes it; others may read)."""

    pattern: str
    type: KeyType
    holds: str
    lives: str
    owner: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = _PLACEHOLDER.split(self.pattern)
        # split() yields literal, name, star, literal, name, star, ..., literal
        regex = "".join(
            re.escape(part)
            if i % 3 == 0
            else ("" if i % 3 == 2 else (".+" if parts[i + 1] else "[^:]+"))
            for i, part in enumerate(parts)
        )
        object.__setattr__(self, "_regex", re.compile(f"^{regex}$"))

    @property
    def prefix(self) -> str:
        """The pattern up to its first placeholder: a key is this plus its parts."""
        return _PLACEHOLDER.split(self.pattern, maxsplit=1)[0]

    def name(self, **parts: str) -> str:
        """The key of these parts: ``RECORD.name(id=...)``."""
        return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], self.pattern)

    def matches(self, key: str) -> bool:
        return self._regex.match(key) is not None


def _outbox(pattern: str, kind: KeyType, holds: str, lives: str, owner: str) -> RedisKey:
    return RedisKey(f"{KEY_PREFIX}{pattern}", kind, holds, lives, owner)


S, H, L, Z, SET = KeyType.STRING, KeyType.HASH, KeyType.LIST, KeyType.ZSET, KeyType.SET
_RECORDS = "worker.records"
_UNTIL_FINAL = "none while in progress; the retention once final"

# Delivery records (worker.records: the Lua scripts move them between statuses).
RECORD = _outbox(
    "msg:{id}", H,
    "a delivery: the message (message JSON, text, html, att:N), status, attempt_count, "
    "recipients JSON, lease_until, next_attempt_at, last_error, retry_base, "
    "idempotency_key, updated_at, claim_token, created_by, priority, send_at, waiting_for, "
    "captured_message (capture mode), redirected_to JSON (redirect mode)",
    _UNTIL_FINAL, _RECORDS,
)  # fmt: skip
ATTEMPTS = _outbox("msg:{id}:attempts", L, "one JSON attempt per try", "as its record", _RECORDS)
STATUS_INDEX = _outbox(
    "status:{status}", Z,
    "the ids in that status, by when they entered it (queued: when last published)",
    "none (the sweeper drops expired ids)", _RECORDS,
)  # fmt: skip
DUE = _outbox(
    "due", Z,
    "ids not final, by when the sweeper should look: a queued one's check, a retry's due "
    "time, a claim's lease end, a scheduled send's time",
    "none", _RECORDS,
)  # fmt: skip
IDEMPOTENCY = _outbox(
    "idempotency:{key*}", S, "the id an idempotency key first created", "the retention",
    _RECORDS,
)  # fmt: skip
KEY_IDEMPOTENCY = _outbox(
    "key-idempotency:{key_name}:{key*}", S,
    "the same, for an API key's own idempotency keys", "the retention", _RECORDS,
)  # fmt: skip
KEY_DELIVERIES = _outbox(
    "key-deliveries:{key_name}", Z,
    "the ids an API key created, by creation: what that producer may list",
    "none (purge drops ids)", _RECORDS,
)  # fmt: skip
ATTEMPT_COUNTERS = _outbox(
    "attempts-by-outcome", H, "outcome -> attempts recorded (/metrics)", "none", _RECORDS
)
REPLICATION_MARKER = _outbox(
    "replication-marker", S, "written before a WAIT, so that it covers every earlier write",
    "none", "worker.records.replication",
)  # fmt: skip

# The worker's coordination.
SWEEPER_LOCK = _outbox(
    "sweeper", S, "the sweeper's lock: the token of the process sweeping", "about one interval",
    "worker.sweeper",
)  # fmt: skip
PAUSE = _outbox(
    "pause", H, "the sending account's pause: until (Redis time), account, reason",
    "until it ends", "worker.sending_limits",
)  # fmt: skip
LIMIT_MINUTE = _outbox(
    "limit:{account*}:minute", Z, "the account's admissions and reservations -> time",
    "a minute", "worker.sending_limits",
)  # fmt: skip
LIMIT_DAY = _outbox(
    "limit:{account*}:day", Z, '"token|recipients" -> admission time', "24 h",
    "worker.sending_limits",
)  # fmt: skip
LIMIT_DAY_TOTAL = _outbox(
    "limit:{account*}:day-total", S, "the recipients admitted in the last 24 hours", "24 h",
    "worker.sending_limits",
)  # fmt: skip
WAIT_COUNTERS = _outbox(
    "waits-by-reason", H, "reason -> waits and pauses (/metrics)", "none",
    "worker.sending_limits",
)  # fmt: skip
GRAPH_SLOTS = _outbox(
    "graph-slots:{mailbox}", Z, "leases of the Graph requests in flight for a mailbox",
    "per member (a lease)", "worker.concurrency",
)  # fmt: skip

# Mail settings, API keys and page sessions (config).
SETTINGS = _outbox(
    "settings", H, "version, document (the mail settings, secrets encrypted), saved_at",
    "none", "config.settings_store",
)  # fmt: skip
SETTINGS_HISTORY = _outbox(
    "settings:history", L,
    "the last 200 saves, newest first: when, by whom, the names of the fields changed",
    "none (trimmed)", "config.settings_store",
)  # fmt: skip
API_KEYS = _outbox(
    "apikeys", H, 'name -> {"role", "created_at", "hash", limits} (JSON)', "none",
    "config.api_keys",
)  # fmt: skip
API_KEY = _outbox(
    "apikey:{sha256}", S, '{"name", "role", limits} (JSON) by the key\'s hash: one GET '
    "authenticates", "none", "config.api_keys",
)  # fmt: skip
API_KEYS_LAST_USED = _outbox(
    "apikeys:last-used", H, "name -> unix time of the key's last request", "none",
    "config.api_keys",
)  # fmt: skip
KEY_QUOTA = _outbox(
    "key-quota:{key_name}:{period}", S,
    "an API key's rate (minute, day) as GCRA's next arrival time (ms)", "its period",
    "api.key_limits",
)  # fmt: skip
SESSION = _outbox(
    "session:{sha256}", S,
    'a signed-in page\'s session: {"key_name", "key_hash", "csrf_token", "created_at"}',
    "the idle time, 12 h at most", "config.sessions",
)  # fmt: skip
SESSIONS_OF = _outbox(
    "sessions-of:{key_name}", SET, "that key's session keys, ended when it is revoked",
    "12 h", "config.sessions",
)  # fmt: skip

# Schedules and their report e-mails (tasks.reports).
SCHEDULES = _outbox(
    "schedules", SET, "the ids of the schedules with notification settings", "none",
    "tasks.reports.store",
)  # fmt: skip
SCHEDULE = _outbox(
    "schedule:{schedule_id}", S, "a schedule's notification settings (JSON)", "none",
    "tasks.reports.store",
)  # fmt: skip
SCHEDULE_LAST = _outbox(
    "schedule:{schedule_id}:last", H, "the status and finished_at of its latest run",
    "none", "tasks.reports.store",
)  # fmt: skip
SCHEDULE_RUN = _outbox(
    "schedule:{schedule_id}:run:{run_id*}", S,
    "a run's result: the e-mails it made, so that a run posted again is answered, not sent",
    "the retention", "tasks.reports.store",
)  # fmt: skip

# Delivery webhooks (worker.webhooks).
WEBHOOKS = _outbox(
    "webhooks", H, "endpoint id -> JSON (URL, events, API key, secret encrypted)", "none",
    "worker.webhooks.endpoints",
)  # fmt: skip
WEBHOOK_EVENTS = _outbox(
    "webhook-events", Z,
    '"{id}:{status}:{attempts}" of final outcomes to announce -> when they became final',
    "none (the dispatcher takes them)", _RECORDS,
)  # fmt: skip
WEBHOOK_DELIVERY = _outbox(
    "webhook-delivery:{msg_id}", H,
    "one event for one endpoint: endpoint, url, type, delivery_id, body (until finished), "
    "status, attempt_count, next_attempt_at, lease_token, lease_until, last_result, "
    "created_at, updated_at (Redis' clock)",
    "the retention once finished", "worker.webhooks.deliveries",
)  # fmt: skip
WEBHOOK_DELIVERY_ATTEMPTS = _outbox(
    "webhook-delivery:{msg_id}:attempts", L, "one JSON attempt per try",
    "as its delivery", "worker.webhooks.deliveries",
)  # fmt: skip
WEBHOOK_DUE = _outbox(
    "webhook-due", Z, "msg ids -> when to send them, or when their lease ends", "none",
    "worker.webhooks.deliveries",
)  # fmt: skip
WEBHOOK_RECENT = _outbox(
    "webhook-recent", Z, "msg ids -> created at, for listing", "none (trimmed)",
    "worker.webhooks.deliveries",
)  # fmt: skip

# The Celery broker: kombu's Redis transport keeps these (without the prefix). Its messages
# carry delivery ids and statuses only (tasks.celery_app).
_KOMBU = "kombu (Celery's broker)"
BROKER_KEYS = (
    RedisKey("outbox", L, "the normal priority's send tasks", "none", _KOMBU),
    RedisKey("outbox.{priority}", L, "the send tasks of high and low priority", "none", _KOMBU),
    RedisKey("unacked", H, "tasks taken but not acknowledged: tag -> task", "none", _KOMBU),
    RedisKey("unacked_index", Z, "their tags -> when taken", "none", _KOMBU),
    RedisKey("unacked_mutex", S, "the lock of restoring unacknowledged tasks", "seconds", _KOMBU),
    RedisKey("_kombu.binding.{exchange*}", SET, "an exchange's queue bindings", "none", _KOMBU),
    RedisKey(
        "_kombu.binding_permanent.{exchange*}", SET, "the bindings of an exchange that never "
        "expire (kombu 5.6 and later)", "none", _KOMBU,
    ),
    RedisKey(
        "_kombu.binding_deadlines", Z, "when each expiring binding (a reply queue's) lapses",
        "none", _KOMBU,
    ),
    RedisKey(
        "{id}.reply.celery.pidbox", L, "a remote-control reply (Flower, `celery inspect`)",
        "seconds", _KOMBU,
    ),
)  # fmt: skip

REGISTRY: tuple[RedisKey, ...] = (
    RECORD, ATTEMPTS, STATUS_INDEX, DUE, IDEMPOTENCY, KEY_IDEMPOTENCY, KEY_DELIVERIES,
    ATTEMPT_COUNTERS, REPLICATION_MARKER,
    SWEEPER_LOCK, PAUSE, LIMIT_MINUTE, LIMIT_DAY, LIMIT_DAY_TOTAL, WAIT_COUNTERS, GRAPH_SLOTS,
    SETTINGS, SETTINGS_HISTORY, API_KEYS, API_KEY, API_KEYS_LAST_USED, KEY_QUOTA, SESSION,
    SESSIONS_OF,
    SCHEDULES, SCHEDULE, SCHEDULE_LAST, SCHEDULE_RUN,
    WEBHOOKS, WEBHOOK_EVENTS, WEBHOOK_DELIVERY, WEBHOOK_DELIVERY_ATTEMPTS, WEBHOOK_DUE,
    WEBHOOK_RECENT,
    *BROKER_KEYS,
)  # fmt: skip


def describing(key: str, kind: KeyType) -> RedisKey | None:
    """The entry that describes ``key`` of this type; None when none does."""
    return next((k for k in REGISTRY if k.type is kind and k.matches(key)), None)


def markdown_table() -> str:
    """The registry as docs/redis-keys.md shows it."""
    lines = [
        "# Redis keys",
        "",
        "Every key outbox and its broker keep, generated from `config/redis_keys.py`",
        "(`python -m config.redis_keys > docs/redis-keys.md`). Placeholders in braces hold no",
        "`:` unless marked `*`.",
        "",
        "| key | type | holds | lives | owner |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{k.pattern}` | {k.type} | {_cell(k.holds)} | {k.lives} | {k.owner} |" for k in REGISTRY
    ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell's own bar


if __name__ == "__main__":
    print(markdown_table(), end="")
