"""Shared fixtures: a real embedded cluster, and a worker on the machine's Redis."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SYSTEM_REDIS, WorkerProcess, forget_queue, system_redis_available

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.settings import Settings

# fixture notebooks that tests run in subprocesses; not collected on their own
collect_ignore_glob = ["notebooks/*.ipynb"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the session's cluster gets the tail of its worker's log in
    the report (what the pool processes said is otherwise gone with the temp dir)."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(cluster, celerynb.LocalCluster) and not cluster.closed:
        with contextlib.suppress(OSError):
            report.sections.append(("embedded worker log (tail)", cluster.worker_log(80)))
    return report


@pytest.fixture(scope="session")
def cluster() -> Iterator[celerynb.LocalCluster]:
    """One embedded cluster (2 pool processes) for the whole session."""
    with celerynb.LocalCluster(n_workers=2) as c:
        yield c


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[celerynb.Cluster]:
    """An "existing deployment": the machine's Redis plus a worker this test starts."""
    if not system_redis_available():
        pytest.skip(f"no Redis at {SYSTEM_REDIS} (set CELERYNB_TEST_REDIS)")
    secret = new_secret()
    worker = WorkerProcess(SYSTEM_REDIS, secret, tmp_path)
    try:
        client = celerynb.connect(SYSTEM_REDIS, secret=secret)
        deadline = time.monotonic() + 30
        while not client.workers(max_age=0):
            assert worker.proc.poll() is None, worker.log.read_text()
            assert time.monotonic() < deadline, worker.log.read_text()
            time.sleep(0.2)
        yield client
        client.close()
    finally:
        worker.stop()
        forget_queue(SYSTEM_REDIS, Settings(SYSTEM_REDIS, secret=secret).queue)
