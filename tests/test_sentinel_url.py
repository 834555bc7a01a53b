"""``redis+sentinel://`` URLs as every part of outbox reads them, and the errors that name them."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError
from redis.sentinel import MasterNotFoundError

from config.errors import InvalidEnvironmentError
from config.process import ProcessSettings
from config.redis_location import RedisLocation
from config.sentinel_url import SentinelTarget
from tasks.context import OutboxContext
from worker.records.replication import in_sync_replicas


def test_the_sentinels_master_name_database_and_password_are_read() -> None:
    target = SentinelTarget.parse(
        "redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380,s3/outbox/2"
    )
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("s3", 26379))
    assert (target.master_name, target.db, target.password) == ("outbox", 2, "s@cret")
    assert "s@cret" not in repr(target)
    assert target.display == (
        "Redis Sentinel at 10.0.0.1:26379, [::1]:26380, s3:26379 (master 'outbox')"
    )


def test_the_database_defaults_to_0_and_a_trailing_slash_is_allowed() -> None:
    target = SentinelTarget.parse("redis+sentinel://h:1/outbox/")
    assert (target.master_name, target.db, target.password) == ("outbox", 0, None)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:1", "the master name is missing"),
        ("redis+sentinel://h:1/", "the master name is missing"),
        ("redis+sentinel://:pw@h:port/outbox", "port must be a number"),
        ("redis+sentinel://h:1,:2/outbox", "host is missing"),
        ("redis+sentinel://h:1/outbox/zero", "database must be a number"),
        ("redis+sentinel://h:1/outbox/0/1", "too many path parts"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_part_and_the_form(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        SentinelTarget.parse(url)
    assert "MASTER_NAME[/DB]" in str(refused.value)
    assert "pw" not in str(refused.value)


def test_a_malformed_url_in_the_environment_names_the_variable_and_not_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_REDIS_URL", "redis+sentinel://:hunter2@h:x/outbox")
    with pytest.raises(InvalidEnvironmentError) as refused:
        OutboxContext.from_environment()
    message = str(refused.value)
    assert "OUTBOX_REDIS_URL" in message
    assert "port must be a number" in message
    assert "hunter2" not in message


def test_kombu_gets_one_sentinel_url_each_and_the_master_name_in_its_options() -> None:
    location = RedisLocation("redis+sentinel://:pw@a:1,b:2/outbox/3", sentinel_password="spw")
    assert location.broker_url == "sentinel://:pw@a:1/3;sentinel://:pw@b:2/3"
    options = location.broker_transport_options
    assert options["master_name"] == "outbox"
    # The sentinels get timeouts of their own: kombu would otherwise wait on one forever.
    assert options["sentinel_kwargs"] == {
        "password": "spw",
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
    }
    assert RedisLocation("redis://h:6379/0").broker_transport_options == {}


def test_min_replicas_is_1_with_sentinel_and_0_otherwise_unless_set() -> None:
    assert ProcessSettings(redis_url="redis+sentinel://h:1/outbox").min_replicas == 1
    assert ProcessSettings(redis_url="redis://h:6379/0").min_replicas == 0
    assert (
        ProcessSettings(redis_url="redis+sentinel://h:1/o", redis_min_replicas=2).min_replicas == 2
    )
    assert ProcessSettings(redis_url="redis://h/0", redis_min_replicas=1).min_replicas == 1


def test_no_primary_is_an_error_naming_sentinel_and_the_master() -> None:
    location = RedisLocation("redis+sentinel://:pw@a:1,b:2/outbox")
    some_answered = location.unavailable(MasterNotFoundError("No master found for 'outbox'"))
    assert str(some_answered) == (
        "Redis Sentinel at a:1, b:2 (master 'outbox') knows no reachable primary "
        "(a failover may be under way) (MasterNotFoundError)"
    )
    none_answered = MasterNotFoundError(
        "No master found for 'outbox' : <Redis<ConnectionPool<Connection<host=a,port=1,db=0>>>> "
        "- ConnectionError(), <Redis<ConnectionPool<Connection<host=b,port=2,db=0>>>> - "
        "TimeoutError()"
    )
    # kombu wraps it when a publish fails: the cause is what is reported.
    try:
        raise OperationalError("publish failed") from none_answered
    except OperationalError as wrapped:
        error = location.unavailable(wrapped)
    assert "no sentinel answered" in str(error)
    assert "pw" not in str(error)
    assert error.retry_after > 0


def test_in_sync_replicas_are_online_and_recently_acknowledging() -> None:
    info = {
        "role": "master",
        "connected_slaves": 3,
        "slave0": {"ip": "127.0.0.1", "port": 1, "state": "online", "offset": 9, "lag": 0},
        "slave1": {"ip": "127.0.0.1", "port": 2, "state": "online", "offset": 9, "lag": 12},
        "slave2": {"ip": "127.0.0.1", "port": 3, "state": "wait_bgsave", "offset": 0, "lag": 0},
    }
    assert in_sync_replicas(info) == 1
    assert in_sync_replicas({"role": "master", "connected_slaves": 0}) == 0
