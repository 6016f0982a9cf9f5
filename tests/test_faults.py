"""Worker and broker faults, against real processes (each test has its own cluster)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import celerynb
from celerynb import ChunkError, ClusterError


@pytest.fixture
def own_cluster() -> Iterator[celerynb.LocalCluster]:
    with celerynb.LocalCluster(n_workers=2) as c:
        yield c


def _slow(xs: list[int]) -> list[int]:
    time.sleep(0.5)
    return xs


def test_killed_child_chunk_is_rerun(own_cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    marker = tmp_path / "killed"

    def die_once(xs: list[int]) -> list[int]:
        if xs[0] == 0 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer
        return [x * 2 for x in xs]

    out = celerynb.cmap(die_once, list(range(16)), chunks=8, cluster=own_cluster, progress=False)
    assert marker.exists()
    assert out == [x * 2 for x in range(16)]


def test_poison_chunk_fails_after_bounded_attempts(own_cluster: celerynb.LocalCluster) -> None:
    def poison(xs: list[int]) -> list[int]:
        if 3 in xs:
            os.kill(os.getpid(), signal.SIGKILL)
        return xs

    started = time.monotonic()
    with pytest.raises(ChunkError, match=r"positions 2:4.*died 2 times") as info:
        celerynb.cmap(
            poison, list(range(16)), chunks=8, cluster=own_cluster, progress=False, attempts=2
        )
    assert time.monotonic() - started < 60
    assert info.value.chunk.start == 2
    assert celerynb.cmap(len, [1, 2, 3], cluster=own_cluster, progress=False) == [1, 2]


def test_whole_worker_killed_mid_call(own_cluster: celerynb.LocalCluster) -> None:
    assert own_cluster.worker_proc is not None
    future = celerynb.cmap_async(
        _slow, list(range(16)), chunks=8, cluster=own_cluster, progress=False
    )
    time.sleep(1.0)
    os.killpg(own_cluster.worker_proc.pid, signal.SIGKILL)
    assert future.result(timeout=90) == list(range(16))
    assert own_cluster.generation == 1
    assert own_cluster.state == "running"
    out = celerynb.cmap(lambda xs: [x + 1 for x in xs], [1, 2], cluster=own_cluster, progress=False)
    assert out == [2, 3]


def test_redis_killed_mid_call_fails_in_bounded_time(own_cluster: celerynb.LocalCluster) -> None:
    own_cluster.broker_timeout = 3.0
    future = celerynb.cmap_async(
        _slow, list(range(16)), chunks=8, cluster=own_cluster, progress=False
    )
    time.sleep(0.3)
    assert own_cluster.redis_proc is not None
    own_cluster.redis_proc.kill()
    started = time.monotonic()
    with pytest.raises(ClusterError, match="unreachable for 3 s"):
        future.result(timeout=60)
    assert time.monotonic() - started < 30
    own_cluster.restart()
    assert own_cluster.state == "running"
    assert celerynb.cmap(len, ["ab"], cluster=own_cluster, progress=False) == [1]


def test_retries_rerun_a_raising_chunk(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    counter = tmp_path / "count"

    def flaky(xs: list[int]) -> list[int]:
        if xs[0] == 0:
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))
            if n < 2:
                raise RuntimeError("transient")
        return xs

    out = celerynb.cmap(flaky, list(range(8)), chunks=4, retries=2, cluster=cluster, progress=False)
    assert out == list(range(8))
    assert counter.read_text() == "3"
    counter.unlink()
    with pytest.raises(RuntimeError, match=r"chunk 0 of .*transient") as info:
        celerynb.cmap(flaky, list(range(8)), chunks=4, retries=1, cluster=cluster, progress=False)
    assert "retries=1" in info.value.remote_traceback


def test_chunk_timeout(cluster: celerynb.LocalCluster) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"chunk_timeout=0.5"):
        celerynb.cmap(
            lambda xs: time.sleep(30) or xs, [1, 2], chunk_timeout=0.5, cluster=cluster,
            progress=False,
        )  # fmt: skip
    assert time.monotonic() - started < 20
    assert celerynb.cmap(len, ["abc", "d"], cluster=cluster, progress=False) == [1, 1]
