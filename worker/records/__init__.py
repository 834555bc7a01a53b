"""Delivery records: what each e-mail's record holds, where it lives in Redis, and who may
move it from one status to another.

Redis keys (``outbox:`` prefix; ids are 32 hex digits)::

    key                              type   holds                                   TTL
    outbox:msg:{id}                  hash   the message (``message`` JSON, ``text``,  none while
                                            ``html``, ``att:N``), ``status``,         in progress;
                                            ``attempt_count``, ``recipients`` JSON,   retention
                                            ``lease_until``, ``next_attempt_at``,     once final
                                            ``last_error``, ``retry_base``,
                                            ``idempotency_key``, ``updated_at``
    outbox:msg:{id}:attempts         list   one JSON ``Attempt`` per try              as the record
    outbox:status:{status}           zset   ids in that status, scored by the time    none (purge
                                            they entered it                           drops ids)
    outbox:idempotency:{key}         string the id the key first created              retention
    outbox:settings                  hash   ``version``, ``document`` (mail settings, none
                                            secret encrypted), ``saved_at``
                                            (``config.settings_store``)
    outbox:graph-slots:{mailbox}     zset   leases of Graph requests in flight        per member
                                            (``worker.concurrency``)
    outbox:attempts-by-outcome       hash   outcome -> attempts recorded (/metrics)   none
    outbox:sweeper                   string the sweeper's lock for one interval       ~1 min
    outbox:apikeys, outbox:apikey:*  hash,  API keys, stored hashed                   none
                                     string (``config.api_keys``)
    outbox:session:{hash}            string a signed-in page's session (``api``)       8 h

The Celery broker (kombu) keeps its own keys beside these (the ``outbox`` queue list,
``unacked`` and ``unacked_index``); they carry delivery ids only.

Status transitions, and who makes each one::

    from                           to                     by        through
    (none)                         queued                 producer  create_many (CREATE)
    queued                         failed                 producer  mark_unqueued: not published
    queued, retrying (once due)    sending                worker    claim (CLAIM)
    sending (lease expired)        sending                worker    claim: the holder died; its
                                                                    attempt is recorded "lost"
    sending                        sent, partially_sent,  worker    finish (TRANSITION)
                                   failed, retrying
    sending                        failed                 worker    fail_unreadable
    failed, partially_sent         queued                 operator  reset_for_retry
    sent, partially_sent, failed   (deleted)              operator  purge (PURGE); or Redis, when
                                                                    the retention TTL runs out

The sweeper changes no status: it publishes again the ids of expired claims and overdue
retries, and the claim decides. Every change of status is one Lua script, so a record and
its index entries never disagree.
"""

from worker.records.claims import ClaimStore, RedisClaims
from worker.records.codec import decode_record, encode_attempt, encode_recipients
from worker.records.keys import (
    ATTEMPT_COUNTERS,
    KEY_PREFIX,
    STATUS_INDEX_PREFIX,
    attempts_key,
    idempotency_key,
    record_key,
    status_index_key,
)
from worker.records.memory import MemoryClaims
from worker.records.model import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    Attempt,
    AttemptOutcome,
    DeliveryRecord,
    DeliveryStatus,
    RecipientOutcome,
    RecipientState,
    record_summary,
)
from worker.records.scripts import (
    AlreadyFinal,
    Busy,
    Claimed,
    ClaimResult,
    Created,
    Early,
    Missing,
    Unreadable,
)
from worker.records.store import DeliveryStore, NewDelivery, Page

__all__ = [
    "ATTEMPT_COUNTERS",
    "FINAL_STATUSES",
    "KEY_PREFIX",
    "RETRYABLE_STATUSES",
    "STATUS_INDEX_PREFIX",
    "AlreadyFinal",
    "Attempt",
    "AttemptOutcome",
    "Busy",
    "ClaimResult",
    "ClaimStore",
    "Claimed",
    "Created",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryStore",
    "Early",
    "MemoryClaims",
    "Missing",
    "NewDelivery",
    "Page",
    "RecipientOutcome",
    "RecipientState",
    "RedisClaims",
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
