"""The data directory and the embedded Redis' files are private to the user who runs outbox."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from config.errors import InvalidEnvironmentError
from config.process import default_data_dir
from config.redis_location import SOCKET_NAME, ensure_embedded_redis
from config.secret_box import load_secret_keys
from peers.processes import run_outbox

ANOTHER_UID = 12345

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the embedded Redis of the test runs; stopped afterwards if it was started."""
    path = tmp_path / "data"
    yield path
    if (path / SOCKET_NAME).exists():
        # The server goes away while answering, as a shutdown does.
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(path / SOCKET_NAME)).shutdown(nosave=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def given_away(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, ANOTHER_UID, ANOTHER_UID)
    return path


def refusal(path: Path) -> str:
    return (
        f"the data directory {path.resolve()} is owned by uid {ANOTHER_UID}, "
        f"not by you (uid {os.geteuid()}); set OUTBOX_DATA_DIR"
    )


def test_the_data_directory_and_every_file_in_it_are_the_users_only(data_dir: Path) -> None:
    socket_path = ensure_embedded_redis(data_dir)
    load_secret_keys(None, data_dir)
    client = redis.Redis(unix_socket_path=str(socket_path))
    client.set("queued", "an e-mail")  # written to the append-only file
    client.bgrewriteaof()  # and its rewrite: new files, made by the running server
    deadline = time.monotonic() + 10
    while client.info("persistence")["aof_rewrite_in_progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert mode_of(data_dir) == 0o700
    made = list(data_dir.rglob("*"))
    assert {path.name for path in made} >= {SOCKET_NAME, "redis.log", "redis.pid", "secret.key"}
    assert any(path.name.endswith(".aof") for path in made)
    modes = {str(path.relative_to(data_dir)): oct(mode_of(path)) for path in made}
    private = {
        str(path.relative_to(data_dir)): oct(0o700 if path.is_dir() or path.is_socket() else 0o600)
        for path in made
    }
    assert modes == private


def test_a_data_directory_others_can_read_is_made_private(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)  # whatever the umask
    with caplog.at_level(logging.WARNING):
        load_secret_keys(None, data_dir)
    assert mode_of(data_dir) == 0o700
    assert f"the data directory {data_dir} was readable by others (mode 0755)" in caplog.text


@needs_root
@pytest.mark.parametrize(
    "use",
    [lambda path: load_secret_keys(None, path), ensure_embedded_redis],
    ids=["key file", "embedded Redis"],
)
def test_a_data_directory_of_another_user_is_refused(
    data_dir: Path, use: Callable[[Path], object]
) -> None:
    given_away(data_dir)
    with pytest.raises(InvalidEnvironmentError) as refused:
        use(data_dir)
    assert str(refused.value) == refusal(data_dir)
    assert list(data_dir.iterdir()) == []  # nothing of ours was put there


@needs_root
def test_the_command_line_names_the_directory_and_its_owner(data_dir: Path) -> None:
    given_away(data_dir)
    env = {"OUTBOX_DATA_DIR": str(data_dir), "OUTBOX_REDIS_URL": "", "OUTBOX_SECRET_KEY": ""}
    listed = run_outbox(env, "list")
    assert listed.returncode == 2
    assert listed.stderr == f"error: {refusal(data_dir)}\n"


@needs_root
def test_a_data_directory_left_by_an_earlier_version_in_the_working_directory_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    legacy = tmp_path / ".outbox"
    legacy.mkdir()
    (legacy / "secret.key").write_text("someone else's key")
    os.chown(legacy, ANOTHER_UID, ANOTHER_UID)
    found = default_data_dir({"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert found == Path(".outbox")
    with pytest.raises(InvalidEnvironmentError) as refused:
        load_secret_keys(None, found)
    assert str(refused.value) == refusal(legacy)
