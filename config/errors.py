"""Every error outbox raises, under one root, each carrying the data its handler needs.

::

    OutboxError                              the text is safe to show: it never holds a secret
     ├── DeliveryError(reason, code, reply)   one send did not succeed
     │    ├── TransientError(retry_after)     try again later: 4xx, disconnect, timeout, refused
     │    │    └── QuotaError(daily)           a provider's quota: the account pauses
     │    ├── PermanentError                  cannot be delivered: 5xx, refused by Graph
     │    └── ConfigurationError              the mail settings are wrong or missing: fix, retry
     ├── InvalidInputError(field)             the caller must change what it asked for
     │    ├── MessageTooLargeError            over OUTBOX_MAX_MESSAGE_BYTES
     │    ├── TooManyRecipientsError          over OUTBOX_MAX_RECIPIENTS
     │    └── InvalidEnvironmentError         an OUTBOX_* variable is malformed
     │         └── SecretKeyError             OUTBOX_SECRET_KEY is not a Fernet key
     ├── AccessError                          the caller may not do this
     │    ├── NotAuthenticatedError           no valid API key or session
     │    ├── PermissionDeniedError           the key's role does not allow it
     │    └── RateLimitedError(retry_after)   over the key's own limit: try again later
     ├── PayloadTooLargeError                 a request body over the API's limit
     ├── NotFoundError                        the thing asked for does not exist
     │    ├── DeliveryNotFoundError           never created, expired or purged
     │    ├── SettingsNotConfiguredError      no mail settings saved yet
     │    ├── KeyNotFoundError                no API key of that name
     │    └── ScheduleNotFoundError           no notification settings for that schedule
     ├── ConflictError                        not possible in the current state
     │    ├── NotRetryableError               only failed or partially sent ones are retried
     │    └── KeyNameTakenError               an API key of that name exists
     └── ServiceError                         outbox's own infrastructure cannot serve
          ├── RedisUnavailableError           Redis (the records and the broker) unreachable
          ├── TooFewReplicasError             fewer replicas than OUTBOX_REDIS_MIN_REPLICAS
          ├── EmbeddedRedisError              the embedded Redis cannot be found or started
          ├── SecretMismatchError             a stored secret does not decrypt with this key
          └── ReportTemplateError             a report template cannot be read or rendered

Library exceptions are translated into these once per library, with ``raise ... from exc``:
SMTP (aiosmtplib, ssl, socket) in ``worker.transports.smtp.errors``, Graph's answers in
``worker.transports.graph.errors``, HTTP connection failures (httpx) in
``worker.transports.http_failures``, msal's results in ``worker.transports.identity``, Redis
and broker failures in ``config.redis_location.RedisLocation.unavailable``, pydantic's
validation errors at the edges. The command line maps the branches to exit codes in one table
(``tasks.cli.errors``), the HTTP API to statuses in another (``api.errors``).
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "ConfigurationError",
    "ConflictError",
    "DeliveryError",
    "DeliveryNotFoundError",
    "EmbeddedRedisError",
    "InvalidEnvironmentError",
    "InvalidInputError",
    "KeyNameTakenError",
    "KeyNotFoundError",
    "MessageTooLargeError",
    "NotAuthenticatedError",
    "NotCancellableError",
    "NotFoundError",
    "NotRetryableError",
    "OutboxError",
    "PayloadTooLargeError",
    "PermanentError",
    "PermissionDeniedError",
    "QuotaError",
    "RateLimitedError",
    "RedisUnavailableError",
    "ReportTemplateError",
    "ScheduleNotFoundError",
    "SecretKeyError",
    "SecretMismatchError",
    "ServiceError",
    "SettingsNotConfiguredError",
    "TooFewReplicasError",
    "TooManyRecipientsError",
    "TransientError",
]


class OutboxError(Exception):
    """The root of every error outbox raises on purpose."""


class DeliveryError(OutboxError):
    """A delivery attempt did not succeed; ``reason`` says why in one line."""

    def __init__(self, reason: str, *, code: int | None = None, reply: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.reply = reply


class TransientError(DeliveryError):
    """Worth retrying later; ``retry_after`` is the server's requested wait, if it gave one."""

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        reply: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, code=code, reply=reply)
        self.retry_after = retry_after


class QuotaError(TransientError):
    """The provider refused for its sending quota or throttled the account: every worker pauses
    the account (for ``retry_after`` when the provider said, else its documented window), and
    the e-mail goes out afterwards without the refusal counting against its attempts.
    ``daily`` tells a daily limit (pause until the next day's window) from a rate."""

    def __init__(
        self,
        reason: str,
        *,
        code: int | None = None,
        reply: str | None = None,
        retry_after: float | None = None,
        daily: bool = False,
    ) -> None:
        super().__init__(reason, code=code, reply=reply, retry_after=retry_after)
        self.daily = daily


class PermanentError(DeliveryError):
    """Retrying cannot help: the server refused the message for good."""


class ConfigurationError(DeliveryError):
    """The mail settings are missing or rejected; an operator must fix them, then retry."""


class InvalidInputError(OutboxError):
    """What the caller asked for is invalid; ``field`` names the field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class MessageTooLargeError(InvalidInputError):
    """The message exceeds OUTBOX_MAX_MESSAGE_BYTES."""


class TooManyRecipientsError(InvalidInputError):
    """The message has more recipients than OUTBOX_MAX_RECIPIENTS."""


class InvalidEnvironmentError(InvalidInputError):
    """An ``OUTBOX_*`` environment variable has a value outbox cannot use."""


class SecretKeyError(InvalidEnvironmentError):
    """OUTBOX_SECRET_KEY is not a Fernet key."""


class AccessError(OutboxError):
    """The caller may not do this."""


class NotAuthenticatedError(AccessError):
    """No valid API key or session came with the request."""


class PermissionDeniedError(AccessError):
    """The caller's role does not allow this."""


class RateLimitedError(AccessError):
    """Over the per-minute or per-day limit of the caller's API key; nothing was stored."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLargeError(OutboxError):
    """A request body over the API's size limit, refused before it is read."""


class NotFoundError(OutboxError):
    """What was asked for does not exist."""


class DeliveryNotFoundError(NotFoundError):
    """No record with that id (never created, expired or purged)."""


class SettingsNotConfiguredError(NotFoundError):
    """No mail settings have been saved yet."""


class KeyNotFoundError(NotFoundError):
    """No API key has that name."""


class ScheduleNotFoundError(NotFoundError):
    """No notification settings are stored for that schedule."""


class ConflictError(OutboxError):
    """The request is valid but the current state does not allow it."""


class NotRetryableError(ConflictError):
    """The delivery is in a status that a retry cannot start from."""


class NotCancellableError(ConflictError):
    """The delivery is being sent, or already final: a cancel can no longer stop it."""


class KeyNameTakenError(ConflictError):
    """An API key with that name exists already."""


class ServiceError(OutboxError):
    """Something outbox itself relies on cannot serve; an operator must look."""


class RedisUnavailableError(ServiceError):
    """Redis, which holds the records and is the broker, cannot be reached or does not answer
    (with Sentinel: no primary is known, as during a failover)."""

    # Seconds worth waiting before trying again: a Sentinel failover takes a few.
    retry_after: float = 5.0


class TooFewReplicasError(ServiceError):
    """Fewer Redis replicas than OUTBOX_REDIS_MIN_REPLICAS are in sync or acknowledged a
    write: an enqueue cannot be acknowledged as safe from a failover."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EmbeddedRedisError(ServiceError):
    """The embedded Redis could not be found or started."""


class SecretMismatchError(ServiceError):
    """A stored secret cannot be decrypted with the current OUTBOX_SECRET_KEY."""


class ReportTemplateError(ServiceError):
    """A report template (outbox's own or from OUTBOX_TEMPLATE_DIR) cannot be read or
    rendered."""
