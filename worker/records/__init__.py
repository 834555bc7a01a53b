"""Delivery records: what each e-mail's record holds, where it lives in Redis, and who may
move it from one status to another.

Redis keys (``outbox:`` prefix; ids are 32 hex digits)::

    key                              type   holds                                   TTL
    outbox:msg:{id}                  hash   the message (``message`` JSON, ``text``,  none while
                                            ``html``, ``att:N``), ``status``,         in progress;
                                            ``attempt_count``, ``recipients`` JSON,   retention
                                            ``lease_until``, ``next_attempt_at``,     once final
                                            ``last_error``, ``retry_base``,
                                            ``idempotency_key``, ``updated_at``,
                                            ``claim_token`` (the last claim's),
                                            ``created_by`` (the API key's name),
                                            ``captured_message`` (MIME, capture mode),
                                            ``redirected_to`` JSON (redirect mode)
    outbox:msg:{id}:attempts         list   one JSON ``Attempt`` per try              as the record
    outbox:status:{status}           zset   ids in that status, scored by the time    none (the
                                            they entered it (queued: when their task  sweeper drops
                                            was last published)                       expired ids)
    outbox:idempotency:{key}         string the id the key first created              retention
    outbox:key-idempotency:{name}:{key} string the same, for an API key's own keys    retention
    outbox:key-deliveries:{name}     zset   the ids an API key created, scored by     none (purge
                                            creation: what a producer may list        drops ids)
    outbox:settings                  hash   ``version``, ``document`` (mail settings, none
                                            secret encrypted), ``saved_at``
                                            (``config.settings_store``)
    outbox:graph-slots:{mailbox}     zset   leases of Graph requests in flight        per member
                                            (``worker.concurrency``)
    outbox:due                       zset   retrying and sending ids, scored by when none
                                            the sweeper should look: a retry's due
                                            time, a claim's lease end
    outbox:attempts-by-outcome       hash   outcome -> attempts recorded (/metrics)   none
    outbox:sweeper                   string the sweeper's lock: the process sweeping   ~1 interval
    outbox:pause                     hash   the sending account's pause: until (Redis until
                                            time), account, reason
                                            (``worker.sending_limits``)
    outbox:limit:{account}:*         zset,  the account's sending windows (minute,    a window
                                     string day, day-total)
    outbox:waits-by-reason           hash   waits and pauses by reason (/metrics)     none
    outbox:apikeys, outbox:apikey:*  hash,  API keys, stored hashed, with their       none
                                     string limits (``config.api_keys``)
    outbox:key-quota:{name}:*        string an API key's rate (minute, day) as GCRA's  its period
                                            next arrival time (``api.key_limits``)
    outbox:session:{hash}            string a signed-in page's session, bound to the   idle time,
                                            key that signed in (``config.sessions``)  12 h at most
    outbox:sessions-of:{name}        set    that key's sessions, ended on revoke      12 h
    outbox:replication-marker        string written before a WAIT, so that it covers   none
                                            every earlier write (``records.replication``)
    outbox:webhooks                  hash   webhook endpoints: id -> JSON (URL, events,  none
                                            key, secret encrypted) (``worker.webhooks``)
    outbox:webhook-events            zset   "{id}:{status}:{attempts}" of outcomes to    none (the
                                            announce, by when they became final        dispatcher
                                                                                       takes them)

The Celery broker (kombu) keeps its own keys beside these (the ``outbox`` queue list,
``unacked`` and ``unacked_index``); they carry delivery ids only.

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
