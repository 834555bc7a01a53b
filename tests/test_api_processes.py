"""``outbox api`` serves from one process per core unless told otherwise (``--workers``)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from peers.processes import Service, child_pids
from peers.redis_server import free_port


def serving_processes(api: Service, count: int) -> list[int]:
    """The processes that started the app (uvicorn logs each), once ``count`` have."""
    deadline = time.monotonic() + 60
    while api.output.count("Application startup complete.") < count:
        assert not api.exited, api.output
        assert time.monotonic() < deadline, api.output
        time.sleep(0.1)
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", api.output)]


def spawned_children(pid: int) -> list[int]:
    """The children of ``pid`` that multiprocessing spawned to run a server."""
    return [
        child
        for child in child_pids(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.mark.parametrize("workers", [None, 1, 3], ids=["default", "one", "three"])
def test_outbox_api_serves_from_one_process_per_core_by_default(
    outbox_env: dict[str, str], workers: int | None
) -> None:
    expected = workers or os.cpu_count() or 1
    port = free_port()
    option = [] if workers is None else ["--workers", str(workers)]
    api = Service(["outbox", "api", "--port", str(port), *option], outbox_env)
    try:
        serving = serving_processes(api, expected)
        assert len(serving) == expected, api.output
        if expected == 1:
            assert serving == [api.pid]  # in the command's own process
        else:
            assert sorted(serving) == sorted(spawned_children(api.pid)), api.output
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert all(client.get("/healthz").status_code == 200 for _ in range(2 * expected))
    finally:
        api.stop()
    assert not any(Path(f"/proc/{pid}").exists() for pid in serving)  # stopped with it
