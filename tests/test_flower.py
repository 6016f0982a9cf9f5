"""Watching a deployment with Flower: its API lists the workers (started with ``-E``) and
the draining tasks of a call, named by the call's label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import SYSTEM_REDIS, WorkerProcess, forget_queue, system_redis_available

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.procs import free_port
from celerynb.settings import ENV_BROKER, ENV_SECRET, Settings

pytestmark = pytest.mark.slow

FLOWER = [sys.executable, "-m", "celery", "-A", "celerynb.worker", "flower"]
WAIT_S = 60.0  # the longest the test waits for Flower or a worker to show up


def score_rows(rows: list[int]) -> list[int]:
    return [r * 2 for r in rows]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def _until(what: str, probe: Any, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} did not show in Flower's API within {WAIT_S} s:\n{log.read_text()}")


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[tuple[int, celerynb.Cluster]]:
    """A deployment (the machine's Redis, one `celerynb worker -E`), Flower on a free port
    watching it, and a client connected to it."""
    if not system_redis_available():
        pytest.skip(f"no Redis at {SYSTEM_REDIS} (set CELERYNB_TEST_REDIS)")
    pytest.importorskip("flower", reason="Flower is not installed: pip install flower")
    secret, port = new_secret(), free_port()
    worker = WorkerProcess(SYSTEM_REDIS, secret, tmp_path, "-E")
    log = tmp_path / "flower.log"
    env = dict(os.environ, FLOWER_UNAUTHENTICATED_API="1", PYTHONPATH=os.getcwd())
    env.update({ENV_BROKER: SYSTEM_REDIS, ENV_SECRET: secret})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*FLOWER, f"--port={port}", "--address=127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = celerynb.connect(SYSTEM_REDIS, secret=secret)
    try:
        yield port, client
    finally:
        client.close()
        for p in (proc, worker.proc):
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait(10)
        forget_queue(SYSTEM_REDIS, Settings(SYSTEM_REDIS, secret=secret).queue)


def test_flower_lists_the_workers_and_a_calls_tasks(
    flower: tuple[int, celerynb.Cluster], tmp_path: Path
) -> None:
    port, client = flower
    log = tmp_path / "flower.log"
    workers = _until("the worker", lambda: _get(port, "/api/workers?refresh=1"), log)
    assert any(name.startswith("celerynb") or "@" in name for name in workers)
    out = celerynb.cmap(score_rows, list(range(100)), cluster=client, chunks=4, progress=False)
    assert out == [r * 2 for r in range(100)]

    def labelled() -> list[dict[str, Any]]:
        tasks = _get(port, "/api/tasks").values()
        return [t for t in tasks if "cmap(score_rows)" in str(t.get("args"))]

    tasks = _until("the call's draining tasks", labelled, log)
    assert {t["name"] for t in tasks} == {"celerynb.run_chunks"}
    assert all(t["worker"] in workers for t in tasks)
