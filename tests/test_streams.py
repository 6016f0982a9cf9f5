"""Iterators of chunks: data bigger than memory, read as needed, with backpressure.

Real embedded cluster (shm data plane) and a real `celerynb worker` on the
machine's Redis (Redis data plane); a real CSV read with `chunksize=`; a
driver process whose memory is measured while it streams over 1 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

import celerynb
from celerynb import ChunkError
from celerynb.call import CallState, Snapshot
from celerynb.progress import Progress

cloudpickle.register_pickle_by_value(sys.modules[__name__])
BOUND = 60


def frames(n: int, rows: int = 500) -> Iterator[pd.DataFrame]:
    for i in range(n):
        idx = pd.RangeIndex(i * rows, (i + 1) * rows, name="row")
        yield pd.DataFrame({"a": np.arange(i * rows, (i + 1) * rows), "b": i % 7}, index=idx)


class Counting:
    """A generator of ``n`` chunks that counts how many were read."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.read = n, fail_at, 0

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError(f"the source broke at chunk {i}")
            self.read += 1
            yield [i] * 10


def slow_sum(xs: list[int]) -> int:
    time.sleep(0.1)
    return sum(xs)


def test_a_generator_joins_like_the_serial_result(cluster: celerynb.LocalCluster) -> None:
    def f(c: pd.DataFrame) -> pd.DataFrame:
        return c.assign(c=c.a * c.b)

    out = celerynb.cmap(f, frames(23), cluster=cluster, progress=False)
    pd.testing.assert_frame_equal(out, f(pd.concat(frames(23))))


def test_read_csv_chunks_and_numpy_arrays(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    data = pd.DataFrame({"x": np.arange(12_345), "k": np.arange(12_345) % 11})
    data.to_csv(path, index=False)

    def totals(c: pd.DataFrame) -> pd.Series:
        return c.groupby("k").x.sum()

    with pd.read_csv(path, chunksize=1_000) as reader:
        out = celerynb.cmap(totals, reader, cluster=cluster, progress=False)
    serial = pd.concat(totals(c) for c in pd.read_csv(path, chunksize=1_000))
    pd.testing.assert_series_equal(out, serial)
    arrays = (np.full((100, 3), i, dtype=np.int16) for i in range(9))
    joined = celerynb.cmap(lambda a: a * 2, arrays, cluster=cluster, progress=False)
    assert joined.dtype == np.int16 and joined.shape == (900, 3) and joined[-1, 0] == 16


def test_zipped_iterators(cluster: celerynb.LocalCluster) -> None:
    a = (np.arange(i, i + 5) for i in range(0, 30, 5))
    b = (np.ones(5) * i for i in range(6))
    out = celerynb.cmap(lambda x, y: x + y, a, b, cluster=cluster, progress=False)
    np.testing.assert_array_equal(out, np.arange(30) + np.repeat(np.arange(6), 5))
    with pytest.raises(TypeError, match="zipped only with other iterators"):
        celerynb.cmap(lambda x, y: x, iter([[1]]), [1], cluster=cluster)


def test_chunk_size_recuts_the_items(cluster: celerynb.LocalCluster) -> None:
    sizes = celerynb.cmap(
        len, frames(7, rows=300), cluster=cluster, progress=False, chunk_size=1_000
    )
    assert sizes == [1_000, 1_000, 100]
    out = celerynb.cmap(
        lambda c: c.a * 2, frames(7, rows=300), cluster=cluster, progress=False, chunk_size=450
    )
    pd.testing.assert_series_equal(out, pd.concat(frames(7, rows=300)).a * 2)
    with pytest.raises(ValueError, match=r"chunks= needs a known length.*chunk_size="):
        celerynb.cmap(len, frames(2), cluster=cluster, chunks=4)


def test_items_that_are_not_chunks_are_refused_and_empty_is_empty(
    cluster: celerynb.LocalCluster,
) -> None:
    with pytest.raises(TypeError, match=r"items are its chunks.*gives a int.*list\(\.\.\.\)"):
        celerynb.cmap(lambda x: x, (i for i in range(3)), cluster=cluster)
    assert celerynb.cmap(len, iter([]), cluster=cluster) == []
    assert celerynb.cmap(len, iter([]), cluster=cluster, reduce=sum) == 0


def test_read_ahead_is_bounded(cluster: celerynb.LocalCluster) -> None:
    source = Counting(40)
    future = celerynb.cmap_async(slow_sum, source, cluster=cluster, progress=False, max_ahead=3)
    worst = 0
    while not future.done():
        snap = future._call.snapshot()
        # read = done + running (at most one per pool process) + stored ahead (max_ahead)
        # + the one the feeder holds between reading and storing
        worst = max(worst, source.read - snap.chunks_done - cluster.concurrency)
        time.sleep(0.02)
    assert future.result(BOUND) == [sum([i] * 10) for i in range(40)]
    assert worst <= 3 + 1, f"read {worst} chunks ahead with max_ahead=3"


def test_as_completed_streams_without_keeping(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(lambda c: int(c.a.sum()), frames(12), cluster=cluster,
                                 progress=False)  # fmt: skip
    got = dict(future.as_completed(timeout=BOUND))
    assert sorted(got) == list(range(12))
    assert sum(got.values()) == int(pd.concat(frames(12)).a.sum())
    with pytest.raises(RuntimeError, match="did not keep them"):
        future.result(BOUND)


def test_reduce_folds_as_it_goes(cluster: celerynb.LocalCluster) -> None:
    out = celerynb.cmap(lambda c: c.b.value_counts().to_dict(), frames(50), cluster=cluster,
                        reduce=merge_counts, progress=False, max_ahead=4)  # fmt: skip
    serial = pd.concat(frames(50)).b.value_counts().to_dict()
    assert out == serial
    assert celerynb.cmap(len, iter([]), reduce=sum, cluster=cluster, progress=False) == 0
    order = celerynb.cmap(lambda xs: xs, ([i] for i in range(30)), reduce=concat,
                          cluster=cluster, progress=False)  # fmt: skip
    assert order == list(range(30)), "parts are reduced in chunk order"


def merge_counts(parts: list[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


def concat(parts: list[list[int]]) -> list[int]:
    return [x for part in parts for x in part]


def test_a_failing_chunk_stops_the_reading(cluster: celerynb.LocalCluster) -> None:
    source = Counting(1_000)

    def fails_on_3(xs: list[int]) -> int:
        if xs[0] == 3:
            raise ValueError("three")
        return sum(xs)

    with pytest.raises(ValueError, match="three") as info:
        celerynb.cmap(fails_on_3, source, cluster=cluster, progress=False, max_ahead=2)
    assert isinstance(info.value, ChunkError) and info.value.chunk.index == 3
    assert "chunk 3 (items 30:40)" in str(info.value)
    read = source.read
    time.sleep(0.5)
    assert source.read == read < 20, "the reading stopped"


def test_the_iterators_own_error_reaches_the_caller(cluster: celerynb.LocalCluster) -> None:
    with pytest.raises(OSError, match="the source broke at chunk 5") as info:
        celerynb.cmap(sum, Counting(10, fail_at=5), cluster=cluster, progress=False)
    assert not isinstance(info.value, ChunkError)
    assert "after 5 chunks were read" in "".join(getattr(info.value, "__notes__", []))
    assert celerynb.cmap(sum, Counting(3), cluster=cluster, progress=False) == [0, 10, 20]


def test_cancel_stops_the_reading(cluster: celerynb.LocalCluster) -> None:
    source = Counting(10_000)
    future = celerynb.cmap_async(slow_sum, source, cluster=cluster, progress=False)
    time.sleep(0.5)
    assert future.cancel()
    read = source.read
    time.sleep(0.5)
    assert source.read == read and read < 50
    assert celerynb.cmap(sum, Counting(2), cluster=cluster, progress=False) == [0, 10]


def test_progress_of_an_iterator_makes_up_no_total() -> None:
    now = time.monotonic()
    snap = Snapshot("cmap(f)", CallState.RUNNING, 3, 5, 300, 500, 2, now - 2, known=False)
    parts = Progress(snap, capacity=2).parts()
    assert parts[0] == "3 chunks" and parts[1] == "300 items" and not any("ETA" in p for p in parts)
    hinted = Snapshot(
        "cmap(f)", CallState.RUNNING, 3, 5, 300, 500, 2, now - 2, known=False, hint=12
    )
    parts = Progress(hinted).parts()
    assert parts[0] == "3/12 chunks" and any(p.startswith("ETA ") for p in parts)
    assert Progress(snap).header() == "cmap(f): an iterator of chunks"


def test_remote_deployment_streams_through_redis(remote: celerynb.Cluster) -> None:
    out = celerynb.cmap(lambda c: c.a.sum(), frames(9), cluster=remote, progress=False)
    assert out == [int(c.a.sum()) for c in frames(9)]
    total = celerynb.cmap(lambda c: int(c.a.sum()), frames(9), reduce=sum, cluster=remote,
                          progress=False, max_ahead=2)  # fmt: skip
    assert total == int(pd.concat(frames(9)).a.sum())


# -- memory: a fresh driver process streams over 1 GB -------------------------------------------
STREAM = """
import json, resource, sys, threading, time
import numpy as np, psutil, celerynb
chunk_mb, n = int(sys.argv[1]), int(sys.argv[2])
def chunks():
    for i in range(n):
        yield np.full(chunk_mb * 2**20 // 8, float(i))
peak, stop = [0], threading.Event()
def watch():
    me = psutil.Process()
    while not stop.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.005)
with celerynb.LocalCluster(2) as c:
    celerynb.cmap(len, [np.zeros(10)], cluster=c, progress=False)  # warm
    base = psutil.Process().memory_info().rss
    threading.Thread(target=watch, daemon=True).start()
    started = time.perf_counter()
    total = 0.0
    for _, s in celerynb.cmap_async(np.sum, chunks(), cluster=c, progress=False).as_completed():
        total += s
    took = time.perf_counter() - started
    stop.set()
print(json.dumps({"grew_mb": (peak[0] - base) / 2**20, "seconds": took, "total": total}))
"""


@pytest.mark.slow
def test_streaming_over_a_gigabyte_keeps_the_driver_flat(tmp_path: Path) -> None:
    chunk_mb, n = 32, 40  # 1.25 GiB in all
    done = subprocess.run(
        [sys.executable, "-c", STREAM, str(chunk_mb), str(n)], cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    expected = sum(float(i) * chunk_mb * 2**20 // 8 for i in range(n))
    assert info["total"] == expected
    # the chunk being made, the one being stored, and the allocator's slack: not the stream
    bound = 6 * chunk_mb
    assert info["grew_mb"] < bound, f"driver RSS grew {info['grew_mb']:.0f} MiB (bound {bound})"
    print(
        f"\nstreamed {chunk_mb * n} MiB in {info['seconds']:.1f} s; "
        f"driver peak RSS +{info['grew_mb']:.0f} MiB"
    )
