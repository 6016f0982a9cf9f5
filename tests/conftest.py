"""Shared fixtures: a real embedded cluster, and a worker on the machine's Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import celerynb
from celerynb.serialization import new_secret

SYSTEM_REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def cluster() -> Iterator[celerynb.LocalCluster]:
    """One embedded cluster (2 pool processes) for the whole session."""
    with celerynb.LocalCluster(n_workers=2) as c:
        yield c


def system_redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class WorkerProcess:
    """A ``celerynb worker`` subprocess against an existing broker."""

    def __init__(self, broker: str, secret: str, tmp: Path, *extra: str, backend: str = "") -> None:
        self.log = tmp / f"worker-{time.monotonic_ns()}.log"
        env = dict(os.environ, CELERYNB_SECRET=secret, PYTHONPATH=os.getcwd())
        env.pop("CELERYNB_BROKER_URL", None)
        args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", broker]
        if backend:
            args += ["--backend", backend]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*args, "--concurrency", "2", *extra],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


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
