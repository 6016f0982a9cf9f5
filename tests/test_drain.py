"""Draining tasks: a few task messages per call, one round trip per chunk."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import eventually

import celerynb
from celerynb import plane as store
from celerynb.plane.keys import CallKeys
from celerynb.planning import TARGET_CHUNK_SECONDS


def _slow_ids(xs: list[int]) -> list[tuple[int, int]]:
    time.sleep(0.03)
    return [(x, os.getpid()) for x in xs]


@pytest.fixture(scope="module")
def short_drains(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[celerynb.LocalCluster]:
    """An embedded cluster whose draining tasks hand over every 0.2 s."""
    monkeypatch_module.setenv("CELERYNB_DRAIN_SECONDS", "0.2")
    with celerynb.LocalCluster(n_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_few_task_messages_for_many_chunks(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(
        lambda xs: [x + 1 for x in xs], list(range(1000)), chunks=1000, cluster=cluster,
        progress=False,
    )  # fmt: skip
    assert future.result(timeout=120) == list(range(1, 1001))
    # one draining task per pool process
    assert future._runner.submission._slots == cluster.n_workers
    assert set(future.workers) != {None}


def test_slots_hand_over_and_calls_take_turns(short_drains: celerynb.LocalCluster) -> None:
    """A slot's work outlives its message: it goes on in fresh ones (behind other calls)."""
    first = celerynb.cmap_async(
        _slow_ids, list(range(60)), chunks=60, cluster=short_drains, progress=False
    )
    time.sleep(0.3)
    second = celerynb.cmap_async(
        _slow_ids, list(range(4)), chunks=2, cluster=short_drains, progress=False
    )
    assert [x for x, _ in second.result(timeout=60)] == list(range(4))
    assert not first.done()  # the short call did not wait for the long one to end
    assert [x for x, _ in first.result(timeout=60)] == list(range(60))


def test_big_results_wait_in_keys_on_a_remote_store(remote: celerynb.Cluster) -> None:
    big = store.INLINE * 3
    future = celerynb.cmap_async(
        lambda xs: [b"x" * big for _ in xs], list(range(6)), chunks=3, cluster=remote,
        progress=False,
    )  # fmt: skip
    assert future.result(timeout=60) == [b"x" * big] * 6
    keys = CallKeys(future.id)
    assert not remote.redis.keys(keys.base.replace("{", "[{]") + "*")


def test_cancel_stops_the_drain(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    marks = tmp_path

    def mark(xs: list[int]) -> list[int]:
        for x in xs:
            (marks / str(x)).touch()
        time.sleep(0.2)
        return xs

    future = celerynb.cmap_async(
        mark, list(range(200)), chunks=200, cluster=cluster, progress=False
    )
    time.sleep(0.5)
    future.cancel()
    time.sleep(1.0)
    ran = len(list(marks.iterdir()))
    assert ran < 40, ran  # queued chunks were dropped, not run
    assert celerynb.cmap(
        lambda xs: [x * 2 for x in xs], [1, 2], cluster=cluster, progress=False
    ) == [2, 4]


def _gated_double(frame: pd.DataFrame, gate: str) -> pd.DataFrame:
    while not os.path.exists(gate):
        time.sleep(0.01)
    return frame * 2


def test_frames_travel_through_shared_memory(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    """An embedded cluster passes big chunks and results as shm files, removed after use."""
    assert cluster.shm is not None
    frame = pd.DataFrame(np.arange(400_000, dtype=float).reshape(-1, 4))  # 3.2 MB
    gate = tmp_path / "go"
    future = celerynb.cmap_async(
        _gated_double, frame, kwargs={"gate": str(gate)}, chunks=8, cluster=cluster,
        progress=False,
    )  # fmt: skip
    try:
        keys = CallKeys(future.id)
        wanted = sorted(keys.chunk_file(i) for i in range(8))

        def stored() -> list[str]:  # chunks are stored on the call's feeder thread
            return sorted(f for f in os.listdir(cluster.shm.directory) if f.startswith(future.id))

        files = eventually(lambda: stored() == wanted and stored())
        assert [f for f in files if f.startswith(future.id)] == wanted, files
        marks = [cluster.redis.get(keys.chunk(i)) for i in range(8)]
        assert marks == [store.SHM_MARKER] * 8, marks  # the keys only mark the chunks live
    finally:
        gate.touch()
    out = future.result(timeout=60)
    pd.testing.assert_frame_equal(out, frame * 2)
    out.iloc[0, 0] = -1.0  # the joined result is the caller's own, writable
    assert not [f for f in os.listdir(cluster.shm.directory) if f.startswith(future.id)]


def test_one_chunk_result_from_shared_memory_is_writable(cluster: celerynb.LocalCluster) -> None:
    arr = np.arange(100_000, dtype=float)
    out = celerynb.cmap(lambda a: a + 1, arr, chunks=1, cluster=cluster, progress=False)
    out[0] = -1.0
    assert out[1] == 2.0 and out.flags.writeable


def _sleepy(xs: list[int]) -> list[int]:
    time.sleep(0.004 * len(xs))
    return [x * 3 for x in xs]


def test_adaptive_chunks_follow_the_probes(cluster: celerynb.LocalCluster) -> None:
    """A cheap func gets a few big chunks, a slow one many that shrink towards the end;
    both in one set of draining tasks (the probes' tasks wait for the rest)."""
    n = cluster.n_workers
    cheap = celerynb.cmap_async(
        lambda xs: [x + 1 for x in xs], list(range(200_000)), cluster=cluster, progress=False
    )
    assert cheap.result(timeout=60) == list(range(1, 200_001))
    assert cheap.n_chunks <= 2 * n + 2, cheap.n_chunks
    assert cheap._runner.submission._slots == n
    slow = celerynb.cmap_async(_sleepy, list(range(600)), cluster=cluster, progress=False)
    assert slow.result(timeout=60) == [x * 3 for x in range(600)]
    assert slow._runner.submission._slots == n
    assert slow._call.plan is not None
    sizes = [slow._call.plan.items(i) for i in range(n, slow.n_chunks)]  # after the probes
    assert len(sizes) > 2 * n, sizes  # 2.4 s of work: many chunks
    # they shrink; the last one may have taken in a crumb (less than half a chunk) left over
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True), sizes
    assert sizes[-1] < 1.5 * sizes[-2], sizes
    # none much shorter than TARGET_CHUNK_SECONDS but the last (the rest, merged)
    assert min(sizes[:-1]) >= TARGET_CHUNK_SECONDS / 0.004 * 0.5, sizes


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount; skips otherwise)."""
    root = tmp_path / "shm"
    root.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_a_full_shm_falls_back_to_redis(tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks and results that do not fit the tmpfs go through Redis; nothing is lost."""
    monkeypatch.setenv("CELERYNB_SHM_ROOT", str(tiny_tmpfs))
    frame = pd.DataFrame(np.arange(1_000_000, dtype=float).reshape(-1, 2))  # 8 MB, 8 chunks
    with celerynb.LocalCluster(n_workers=1) as local:
        assert local.shm is not None and local.shm.directory.parent == tiny_tmpfs
        out = celerynb.cmap(lambda f: f * 2, frame, chunks=8, cluster=local, progress=False)
        pd.testing.assert_frame_equal(out, frame * 2)
        del out
        assert os.listdir(local.shm.directory) == []


def test_shared_memory_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERYNB_SHM_ROOT", "off")
    with celerynb.LocalCluster(n_workers=1) as local:
        assert local.shm is None
        arr = np.arange(200_000, dtype=float)
        out = celerynb.cmap(lambda a: a + 1, arr, chunks=2, cluster=local, progress=False)
        np.testing.assert_array_equal(out, arr + 1)


def test_big_call_starts_before_all_is_stored(cluster: celerynb.LocalCluster) -> None:
    """Workers take the first chunks while the rest is stored (the call is open till then)."""
    frame = pd.DataFrame(np.random.default_rng(0).random((2_000_000, 2)))  # 32 MB, 32 chunks
    future = celerynb.cmap_async(lambda f: f * 2, frame, chunks=32, cluster=cluster, progress=False)
    pd.testing.assert_frame_equal(future.result(timeout=60), frame * 2)
    assert future._runner.submission._slots == cluster.n_workers
    assert not cluster.redis.exists(CallKeys(future.id).open)
