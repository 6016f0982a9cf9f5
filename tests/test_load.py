"""Load, and nothing left behind: many chunks, many calls in flight, 200 calls."""

from __future__ import annotations

import os
import time

import psutil
import pytest

import celerynb
from celerynb import CancelledError, ChunkError


def _ours(cluster: celerynb.LocalCluster) -> list[bytes]:
    """Keys of celerynb calls (ours, and Celery's for our tasks) left in the store
    (the workers' registry, ``celerynb:workers:*``, stays while they run)."""
    keys = cluster.redis.keys("celerynb:{*") + cluster.redis.keys("celery-task*-meta-celerynb-*")
    return sorted(keys)


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def test_ten_thousand_small_chunks(cluster: celerynb.LocalCluster) -> None:
    rss_before = psutil.Process().memory_info().rss
    future = celerynb.cmap_async(
        lambda xs: [x + 1 for x in xs], list(range(10_000)), chunks=10_000, cluster=cluster,
        progress=False,
    )  # fmt: skip
    out = future.result(timeout=300)
    assert out == list(range(1, 10_001))
    assert future.n_chunks == 10_000
    assert all(w is not None for w in future.workers)
    grown = psutil.Process().memory_info().rss - rss_before
    assert grown < 200 * 2**20, f"driver grew by {grown / 2**20:.0f} MiB"
    assert _ours(cluster) == []


def test_twenty_calls_in_flight(cluster: celerynb.LocalCluster) -> None:
    futures = [
        celerynb.cmap_async(
            lambda xs, k=k: [x * k for x in xs], list(range(200)), cluster=cluster, progress=False
        )
        for k in range(20)
    ]
    for k, future in enumerate(futures):
        assert future.result(timeout=120) == [x * k for x in range(200)]
    assert _ours(cluster) == []


def _boom(xs: list[int]) -> list[int]:
    if 7 in xs:
        raise ValueError("seven")
    return xs


def test_nothing_left_behind_after_200_calls(cluster: celerynb.LocalCluster) -> None:
    celerynb.cmap(lambda xs: xs, [1, 2], cluster=cluster, progress=False)  # warm
    fds, children = _open_fds(), len(psutil.Process().children(recursive=True))
    threads = len(psutil.Process().threads())
    outcomes = {"ok": 0, "failed": 0, "cancelled": 0, "reduced": 0}
    for i in range(200):
        kind = i % 4
        if kind == 0:
            assert celerynb.cmap(lambda xs: xs, list(range(20)), cluster=cluster, progress=False)
            outcomes["ok"] += 1
        elif kind == 1:
            with pytest.raises(ChunkError):
                celerynb.cmap(_boom, list(range(20)), cluster=cluster, progress=False)
            outcomes["failed"] += 1
        elif kind == 2:
            future = celerynb.cmap_async(
                lambda xs: time.sleep(0.2) or xs, list(range(4)), cluster=cluster, progress=False
            )
            future.cancel()
            with pytest.raises(CancelledError):
                future.result()
            outcomes["cancelled"] += 1
        else:
            assert (
                celerynb.cmap(sum, list(range(20)), reduce=sum, cluster=cluster, progress=False)
                == 190
            )
            outcomes["reduced"] += 1
    assert outcomes == {"ok": 50, "failed": 50, "cancelled": 50, "reduced": 50}
    time.sleep(1.0)  # late writers of cancelled calls finish
    celerynb.cmap(lambda xs: xs, [1], cluster=cluster, progress=False)
    cluster.sweep(force=True)
    assert _ours(cluster) == []
    assert _open_fds() <= fds + 5
    # a cancelled chunk's pool process is terminated and replaced: wait for the pool
    deadline = time.monotonic() + 10
    while len(psutil.Process().children(recursive=True)) != children:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(psutil.Process().children(recursive=True)) == children
    deadline = time.monotonic() + 5
    while len(psutil.Process().threads()) > threads + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(psutil.Process().threads()) <= threads + 2
