"""What a process builds once at start from its environment, handed to everything else."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis
from pydantic import ValidationError

from config.errors import InvalidEnvironmentError
from config.process import ProcessSettings
from config.redis_location import RedisLocation, resolve_redis
from config.secret_box import SecretBox, load_secret_keys
from config.settings_store import SettingsStore
from tasks.reports.store import ScheduleStore
from worker.records import DeliveryStore
from worker.records.replication import FailoverWatch, ReplicaWait

__all__ = ["OutboxContext"]
from worker.transports.factory import TransportOptions, transport_options


@dataclass(frozen=True)
class OutboxContext:
    """Process settings and the clients built from them; one per process."""

    settings: ProcessSettings
    redis_location: RedisLocation

    @classmethod
    def from_environment(cls) -> OutboxContext:
        """Read ``OUTBOX_*``; a malformed value is an ``InvalidEnvironmentError`` naming it."""
        try:
            settings = ProcessSettings()
        except ValidationError as exc:
            raise InvalidEnvironmentError(f"invalid environment: {_by_variable(exc)}") from None
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: ProcessSettings) -> OutboxContext:
        """The context of ``settings`` (starting the embedded Redis if no URL is set)."""
        return cls(
            settings,
            resolve_redis(
                settings.redis_url,
                settings.data_dir,
                sentinel_password=settings.sentinel_password_text,
            ),
        )

    @cached_property
    def secret_box(self) -> SecretBox:
        configured = self.settings.secret_key
        return SecretBox(
            load_secret_keys(
                configured.get_secret_value() if configured else None, self.settings.data_dir
            )
        )

    @cached_property
    def redis(self) -> redis.Redis:
        return self.redis_location.client()

    @cached_property
    def replicas(self) -> ReplicaWait:
        """How producers make sure an enqueue survives a failover (OUTBOX_REDIS_MIN_REPLICAS)."""
        location = self.redis_location
        target = location.sentinel
        return ReplicaWait(
            self.redis,
            min_replicas=self.settings.min_replicas,
            timeout_seconds=self.settings.redis_replica_timeout_seconds,
            where=location.display,
            failovers=FailoverWatch(location.sentinel_clients(), target.master_name)
            if target is not None
            else None,
        )

    @cached_property
    def settings_store(self) -> SettingsStore:
        return SettingsStore(self.redis, self.secret_box)

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.redis, retention_seconds=self.settings.retention_seconds)

    @cached_property
    def deliveries(self) -> DeliveryStore:
        return DeliveryStore(self.redis, retention_seconds=self.settings.retention_seconds)

    @cached_property
    def transport_options(self) -> TransportOptions:
        return transport_options(self.settings)


def _by_variable(error: ValidationError) -> str:
    """One problem per variable, named as it is set: ``OUTBOX_REDIS_URL: ...``."""
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        message = problem["msg"].removeprefix("Value error, ")
        name = "_".join(str(part) for part in problem["loc"]).upper()
        # A check of several variables together names them in its own message.
        problems.append(f"OUTBOX_{name}: {message}" if name else message)
    return "; ".join(problems)
