"""What can be checked of deployment here: the embedded Redis default, the Procfile's Flower
and docker-compose.yml."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from config.process import default_data_dir
from config.redis_location import SOCKET_NAME
from config.sentinel_url import SentinelTarget
from peers.processes import ROOT, Service, run_outbox
from peers.redis_server import free_port


@pytest.fixture
def embedded_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    data_dir = tmp_path / "data"
    env = {"OUTBOX_DATA_DIR": str(data_dir), "OUTBOX_REDIS_URL": "", "OUTBOX_SECRET_KEY": ""}
    yield env
    socket_path = data_dir / SOCKET_NAME
    if socket_path.exists():
        client = redis.Redis(unix_socket_path=str(socket_path))
        # The server goes away while answering, as a shutdown does.
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)


def test_without_redis_url_an_embedded_redis_is_started_and_reused(
    embedded_env: dict[str, str],
) -> None:
    saved = run_outbox(
        embedded_env,
        "settings",
        "set",
        "smtp",
        "--from-mailbox",
        "robot@example.com",
        "--username",
        "u",
        "--password-stdin",
        stdin="pw\n",
    )
    assert saved.returncode == 0, saved.stderr
    assert "generated a key" in saved.stderr
    data_dir = Path(embedded_env["OUTBOX_DATA_DIR"])
    assert f"started the embedded Redis in {data_dir}" in saved.stderr
    key_file = data_dir / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600

    client = redis.Redis(unix_socket_path=str(data_dir / SOCKET_NAME))
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("port") == {"port": "0"}  # no TCP listener: socket only
    pid = client.info("server")["process_id"]

    shown = run_outbox(embedded_env, "settings", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["password_set"] is True
    assert "generated a key" not in shown.stderr
    assert "started the embedded Redis" not in shown.stderr
    assert client.info("server")["process_id"] == pid  # reused, not restarted


def test_the_default_data_directory_is_per_user_not_per_working_directory(
    tmp_path: Path,
) -> None:
    data_home = tmp_path / "xdg-data"
    env = {"XDG_DATA_HOME": str(data_home), "OUTBOX_REDIS_URL": "", "OUTBOX_SECRET_KEY": ""}
    assert "OUTBOX_DATA_DIR" not in os.environ
    try:
        first = run_outbox(env, "list")
        assert first.returncode == 0, first.stderr
        assert f"started the embedded Redis in {data_home / 'outbox'}" in first.stderr
        assert (data_home / "outbox" / SOCKET_NAME).exists()
    finally:
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(data_home / "outbox" / SOCKET_NAME)).shutdown(
                nosave=True
            )


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line)


def listening_addresses(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                # /proc spells an address as 32-bit words in host (little-endian) order.
                packed = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                )
                found.add(str(ipaddress.ip_address(packed)))
    return found


def addresses_of(command: str, env: dict[str, str], port: int) -> set[str]:
    """Where ``command`` (a Procfile line, run by a shell as honcho does) listens on ``port``."""
    service = Service(["sh", "-c", command], env)
    try:
        deadline = time.monotonic() + 60
        while not (found := listening_addresses(port)):
            assert not service.exited, service.output
            assert time.monotonic() < deadline, service.output
            time.sleep(0.1)
        return found
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("command", "address", "expected"),
    [
        (procfile()["flower"], "", {"127.0.0.1"}),
        (procfile()["flower"], "0.0.0.0", {"0.0.0.0"}),
        ("outbox flower --port=${OUTBOX_FLOWER_PORT}", "", {"127.0.0.1"}),
    ],
    ids=["procfile", "procfile-address-set", "outbox-flower"],
)
def test_flower_listens_on_loopback_unless_told_otherwise(
    outbox_env: dict[str, str], command: str, address: str, expected: set[str]
) -> None:
    port = free_port()
    env = {**outbox_env, "OUTBOX_FLOWER_PORT": str(port)}
    if address:
        env["OUTBOX_FLOWER_ADDRESS"] = address
    assert addresses_of(command, env, port) == expected


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose (Debian package) is needed to validate docker-compose.yml"
    return found


@pytest.mark.parametrize("profiles", [[], ["--profile", "sentinel"]], ids=["plain", "sentinel"])
def test_docker_compose_file_is_valid(profiles: list[str]) -> None:
    env = {**os.environ, "OUTBOX_SECRET_KEY": "k", "FLOWER_BASIC_AUTH": "admin:pw"}
    result = subprocess.run(
        [docker_compose(), "-f", str(ROOT / "docker-compose.yml"), *profiles, "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_uses_the_procfile_commands() -> None:
    env = {**os.environ, "OUTBOX_SECRET_KEY": "k", "FLOWER_BASIC_AUTH": "admin:pw"}
    rendered = subprocess.run(
        [docker_compose(), "-f", str(ROOT / "docker-compose.yml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = procfile()
    assert commands["worker"] == "outbox worker"
    assert "- outbox\n    - worker" in rendered
    assert commands["flower"].startswith("outbox flower")
    assert "- outbox\n    - flower" in rendered
    assert commands["web"].startswith("outbox api")
    assert "- outbox\n    - api" in rendered
    assert "127.0.0.1:8000" in rendered or "host_ip: 127.0.0.1" in rendered
    assert "--appendonly" in rendered
    # Inside its container Flower listens everywhere, behind basic auth, published on the
    # host's loopback only.
    assert "- --address=0.0.0.0" in rendered
    assert "127.0.0.1:5555:5555" in rendered
    assert "FLOWER_BASIC_AUTH: admin:pw" in rendered


def compose_services(*profiles: str) -> dict[str, dict[str, Any]]:
    """The services ``docker compose [--profile P]... up`` starts, as ``config`` resolves them.
    Debian's docker-compose (1.29) prints every service whatever the profiles, so they are
    applied here as Compose applies them: a service without profiles always starts, one with
    profiles only when one of them is on."""
    env = {**os.environ, "OUTBOX_SECRET_KEY": "k", "FLOWER_BASIC_AUTH": "admin:pw"}
    options = [option for profile in profiles for option in ("--profile", profile)]
    rendered = subprocess.run(
        [docker_compose(), "-f", str(ROOT / "docker-compose.yml"), *options, "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    services: dict[str, dict[str, Any]] = yaml.safe_load(rendered)["services"]
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def command_text(service: dict[str, Any]) -> str:
    """The service's command as one string, with its environment's variables put in."""
    command = service.get("command", [])
    text = " ".join(command) if isinstance(command, list) else str(command)
    for name, value in (service.get("environment") or {}).items():
        text = text.replace(f"$${name}", str(value)).replace(f"${name}", str(value))
    return text


def published_ports(services: dict[str, dict[str, Any]]) -> list[str]:
    """Every host port published, as ``PORT/PROTOCOL`` (1.29 prints short syntax, Compose v2
    the long one)."""
    found = []
    for service in services.values():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                found.append(f"{port['published']}/{port.get('protocol', 'tcp')}")
            else:
                mapping, _, protocol = str(port).partition("/")
                parts = mapping.split(":")
                if len(parts) > 1:  # a bare container port publishes none of the host's
                    found.append(f"{parts[-2]}/{protocol or 'tcp'}")
    return found


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The service's volumes as (source, target, read-only), from short or long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
        else:
            source, target, *mode = str(volume).split(":")
            found.append((source, target, "ro" in mode))
    return found


def dependencies(services: dict[str, dict[str, Any]], name: str) -> set[str]:
    """What ``up NAME`` starts besides NAME: its depends_on, followed through."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for dependency in services.get(todo.pop(), {}).get("depends_on", {}):
            if dependency not in found:
                found.add(dependency)
                todo.append(dependency)
    return found


def outbox_service(services: dict[str, dict[str, Any]], command: str, url: str) -> str:
    """The one service running ``outbox COMMAND`` with an OUTBOX_REDIS_URL starting ``url``."""
    (name,) = [
        name
        for name, service in services.items()
        if service.get("command", [])[:2] == ["outbox", command]
        and service["environment"]["OUTBOX_REDIS_URL"].startswith(url)
    ]
    return name


def test_docker_compose_without_a_profile_starts_the_single_redis_deployment() -> None:
    services = compose_services()
    assert set(services) == {"redis", "worker", "flower", "web"}
    assert "--appendonly" in services["redis"]["command"]
    for name in ("worker", "flower", "web"):
        assert services[name]["environment"]["OUTBOX_REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert sorted(published_ports(services)) == ["5555/tcp", "8000/tcp"]


def test_docker_compose_sentinel_profile_runs_outbox_on_sentinel_watched_redis() -> None:
    services = compose_services("sentinel")
    sentinels = {name for name, s in services.items() if "--sentinel" in command_text(s)}
    replicas = {name for name, s in services.items() if "replicaof " in command_text(s)}
    assert len(sentinels) == 3
    assert len(replicas) == 2
    (primary,) = {
        command_text(services[name]).split("replicaof ")[1].split()[0] for name in replicas
    }
    assert primary in services
    assert primary not in replicas | sentinels

    for name in (primary, *replicas):
        command = command_text(services[name])
        # As durable as the single Redis, and announced by the name the network resolves.
        assert "--appendonly yes --appendfsync everysec" in command
        assert f"--replica-announce-ip {name}" in command
        assert mounts(services[name]) == [(f"{name}-data", "/data", False)]
    for name in sentinels:
        config = command_text(services[name])
        assert f"sentinel monitor outbox {primary} 6379 2" in config
        assert "sentinel down-after-milliseconds outbox 5000" in config
        assert "sentinel failover-timeout outbox 60000" in config
        assert "sentinel resolve-hostnames yes" in config
        assert "sentinel announce-hostnames yes" in config
        assert f"sentinel announce-ip {name}" in config
        # Sentinel rewrites its config: written at start on its own volume, not mounted in.
        assert "> /data/sentinel.conf" in config
        assert mounts(services[name]) == [(f"{name}-data", "/data", False)]

    for command in ("worker", "flower", "api"):
        name = outbox_service(services, command, "redis+sentinel://")
        target = SentinelTarget.parse(services[name]["environment"]["OUTBOX_REDIS_URL"])
        assert target.master_name == "outbox"
        assert set(target.sentinels) == {(sentinel, 26379) for sentinel in sentinels}
        # Starting it alone (up -d worker-ha flower-ha web-ha) starts the whole Sentinel stack.
        assert dependencies(services, name) >= {primary, *replicas, *sentinels}
        # The same process as its single-Redis twin, only pointed elsewhere.
        twin = services[outbox_service(services, command, "redis://")]
        assert services[name]["command"] == twin["command"]
        assert {**services[name]["environment"], "OUTBOX_REDIS_URL": ""} == {
            **twin["environment"],
            "OUTBOX_REDIS_URL": "",
        }

    ports = published_ports(services)
    assert len(ports) == len(set(ports)), ports


@pytest.mark.parametrize("profiles", [(), ("sentinel",)], ids=["plain", "sentinel"])
def test_docker_compose_services_only_depend_on_services_that_start(
    profiles: tuple[str, ...],
) -> None:
    services = compose_services(*profiles)
    for name in services:
        assert dependencies(services, name) <= set(services), name


def test_a_data_directory_left_by_an_earlier_version_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg/outbox"
    (tmp_path / ".outbox").mkdir()
    (tmp_path / ".outbox" / "secret.key").write_text("k")
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path / "xdg")}) == Path(".outbox")
    assert "of an earlier outbox version" in caplog.text
