"""Delivery records: what each e-mail's record holds, where it lives in Redis, and who may
move it from one status to another.

Every Redis key (these and every other part's) is described in one registry,
``config.redis_keys``, rendered as docs/redis-keys.md; a record is ``outbox:msg:{id}`` (a
hash; ids are 32 hex digits) with its ``:attempts`` list, indexed by ``outbox:status:*`` and
``outbox:due``.

Status transitions, and who makes each one::

    from                           to                     by        through
    (none)                         queued, scheduled      producer  create_many (CREATE)
                                   (with a send time)
    scheduled (its time came)      queued                 sweeper   SWEEP, then publishes it
    scheduled, queued, retrying,   cancelled              producer, cancel (CANCEL)
    waiting                                               operator
    queued                         failed                 producer  mark_unqueued: not published
    queued, retrying, waiting,     sending                worker    claim (CLAIM)
    scheduled (once due)
    sending (lease lapsed)         sending                worker    claim with take-over, alone
                                                                    in its process: the holder
                                                                    died; its attempt is
                                                                    recorded "lost"
    sending (lease lapsed, the     failed                 worker    claim: a message that kills
    last attempt)                                                   its worker stops here
    sending                        sent, partially_sent,  worker    finish (TRANSITION)
                                   failed, captured,
                                   retrying,
                                   waiting (a provider's
                                   quota; not counted)
    sending                        waiting                worker    wait: the account's limit
                                                                    or pause; no attempt
    sending                        failed                 worker    fail_unreadable
    retrying, waiting (due)        queued                 sweeper   SWEEP, then publishes it
    failed, partially_sent         queued                 operator  reset_for_retry
    any final status               (deleted)              operator  purge (PURGE); or Redis, when
                                                                    the retention TTL runs out

A claim is a lease that its worker renews while the attempt runs (RENEW) and gives up when
it finishes; a worker that dies lets it lapse within one lease. Leases and due times are
Redis' clock (``TIME`` in the scripts), and a random token names each claim, so a script run
again after its reply was lost takes effect once. The sweeper (one worker process per
interval) reads ``outbox:due`` and the queued index, and publishes again what nobody will
otherwise run: due retries, lapsed claims, and queued deliveries whose task is no longer in
the broker's queue (lost with a dead worker, or never published by a producer that died).
Every change of status is one Lua script, so a record, its index entries and its due time
never disagree.
"""

from worker.records.claims import ClaimStore, Finished, RedisClaims
from worker.records.codec import decode_record, encode_attempt, encode_recipients
from worker.records.keys import (
    ATTEMPT_COUNTERS,
    DUE_KEY,
    KEY_PREFIX,
    PAUSE_KEY,
    STATUS_INDEX_PREFIX,
    WEBHOOK_EVENTS_KEY,
    WEBHOOKS_KEY,
    attempts_key,
    idempotency_key,
    record_key,
    status_index_key,
)
from worker.records.memory import MemoryClaims
from worker.records.model import (
    CANCELLABLE_STATUSES,
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    Outcome,
    Priority,
    RecipientOutcome,
    RecipientState,
    record_summary,
)
from worker.records.scripts import (
    AccountPause,
    AlreadyFinal,
    Busy,
    Claimed,
    ClaimResult,
    Created,
    Early,
    Exhausted,
    Missing,
    SweepVerdict,
    Unreadable,
)
from worker.records.store import ALL_OWNERS, CancelOutcome, DeliveryStore, NewDelivery, Page

__all__ = [
    "ALL_OWNERS",
    "ATTEMPT_COUNTERS",
    "CANCELLABLE_STATUSES",
    "DUE_KEY",
    "FINAL_STATUSES",
    "KEY_PREFIX",
    "PAUSE_KEY",
    "RETRYABLE_STATUSES",
    "STATUS_INDEX_PREFIX",
    "WEBHOOKS_KEY",
    "WEBHOOK_EVENTS_KEY",
    "AccountPause",
    "AlreadyFinal",
    "Attempt",
    "AttemptOutcome",
    "Busy",
    "CancelOutcome",
    "ClaimResult",
    "ClaimStore",
    "Claimed",
    "Created",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryStore",
    "Early",
    "Exhausted",
    "Finished",
    "MemoryClaims",
    "Missing",
    "NewDelivery",
    "Outcome",
    "Page",
    "Priority",
    "RecipientOutcome",
    "RecipientState",
    "RedisClaims",
    "SweepVerdict",
    "Unreadable",
    "attempts_key",
    "decode_record",
    "encode_attempt",
    "encode_recipients",
    "idempotency_key",
    "record_key",
    "record_summary",
    "status_index_key",
]
