"""Streaming: ``MapFuture.as_completed()`` yields chunk results as they finish.

Checked on the session's real embedded cluster: every chunk comes exactly once
with its chunk number, in completion order (a slow first chunk comes last, and
the first result is in the notebook before the slow chunk is done);
``ordered=True`` yields in chunk order; the parts are what ``result()`` joins;
errors, ``timeout=`` and reduce= calls.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import cloudpickle
import pytest

import celerynb
from celerynb import ChunkError, join

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60  # seconds any single call may take on a loaded machine
SLOW = 2.5  # seconds chunk 0 sleeps; the others take a fraction of that in all
DELAYS = [SLOW, 0.05, 0.3, 0.05, 0.2, 0.1]


def sleeper(delays: list[float]) -> list[tuple[float, float]]:
    """Sleep for each delay; return (delay, wall-clock time at the end) pairs."""
    out = []
    for delay in delays:
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        time.sleep(delay)
        out.append((delay, time.time()))
    return out


def start(cluster: celerynb.LocalCluster, delays: list[float], **kw: Any) -> celerynb.MapFuture:
    return celerynb.cmap_async(
        sleeper, delays, chunks=len(delays), cluster=cluster, progress=False, **kw
    )


def test_yields_in_completion_order() -> None:
    # a cluster of its own: on the shared one, another test's late chunk could keep
    # a pool process busy and change which chunk runs first
    with celerynb.LocalCluster(n_workers=2) as cluster:
        future = start(cluster, DELAYS)
        got: list[tuple[int, Any]] = []
        received: list[float] = []
        for i, part in future.as_completed():
            received.append(time.time())
            got.append((i, part))
    order = [i for i, _ in got]
    assert sorted(order) == list(range(len(DELAYS)))  # every chunk exactly once
    assert order != sorted(order)  # completion order, not chunk order
    assert order[0] != 0  # the slow chunk did not come first
    parts = dict(got)
    slow_done = parts[0][0][1]
    assert received[0] < slow_done, "the first result only came after the slow chunk ended"
    for i, part in got:
        assert [d for d, _ in part] == [DELAYS[i]]
    # the parts are what result() joins, in chunk order
    assert future.result(timeout=BOUND) == join([parts[i] for i in range(len(DELAYS))])


def test_ordered_yields_in_chunk_order(cluster: celerynb.LocalCluster) -> None:
    future = start(cluster, DELAYS)
    got = list(future.as_completed(ordered=True))
    assert [i for i, _ in got] == list(range(len(DELAYS)))
    assert [part[0][0] for _, part in got] == DELAYS
    assert future.result(timeout=BOUND) == join([part for _, part in got])


def test_ordered_does_not_wait_for_later_chunks(cluster: celerynb.LocalCluster) -> None:
    """With the slow chunk last, ordered=True yields the early chunks before it ends."""
    delays = [0.05, 0.05, 0.05, SLOW]
    future = start(cluster, delays)
    received = {}
    parts = {}
    for i, part in future.as_completed(ordered=True):
        received[i] = time.time()
        parts[i] = part
    assert list(received) == [0, 1, 2, 3]
    assert received[0] < parts[3][0][1]
    future.result(timeout=BOUND)


def test_error_is_raised_from_the_iterator(cluster: celerynb.LocalCluster) -> None:
    future = start(cluster, [0.05, 0.05, -1.0, 0.05])
    seen = []
    with pytest.raises(ChunkError) as info:
        for i, _ in future.as_completed():
            seen.append(i)
    assert isinstance(info.value, ValueError)
    assert "chunk 2 of 4 (positions 2:3)" in str(info.value)
    assert "negative delay" in str(info.value)
    assert 2 not in seen
    with pytest.raises(ChunkError):
        future.result(timeout=BOUND)


def test_timeout_when_nothing_arrives(cluster: celerynb.LocalCluster) -> None:
    future = start(cluster, [1.5, 1.5])
    with pytest.raises(TimeoutError, match=r"no chunk finished within 0\.3 s"):
        next(future.as_completed(timeout=0.3))
    assert not future.done()  # the call keeps running
    # a new iterator starts over and gets every chunk
    assert sorted(i for i, _ in future.as_completed(timeout=BOUND)) == [0, 1]
    assert [d for d, _ in future.result(timeout=BOUND)] == [1.5, 1.5]


def test_reduce_call_cannot_stream(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(
        sum, list(range(10)), chunks=3, reduce=sum, cluster=cluster, progress=False
    )
    with pytest.raises(TypeError, match="reduce="):
        for _ in future.as_completed():
            pass
    assert future.result(timeout=BOUND) == 45


def test_after_result_the_parts_are_gone(cluster: celerynb.LocalCluster) -> None:
    future = start(cluster, [0.01, 0.01])
    assert len(future.result(timeout=BOUND)) == 2
    with pytest.raises(RuntimeError, match="result"):
        list(future.as_completed())


def test_empty_call_yields_nothing(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(sleeper, [], cluster=cluster, progress=False)
    assert list(future.as_completed()) == []
    assert future.result() == []


def test_streams_groupby_chunks(cluster: celerynb.LocalCluster) -> None:
    """A groupby call streams each chunk's groups with their results; all of them, in
    chunk order, are the full apply's."""
    import pandas as pd

    from celerynb.groupby import GroupResults

    df = pd.DataFrame({"k": [i % 5 for i in range(20)], "v": [float(i) for i in range(20)]})
    future = celerynb.cmap_async(
        lambda g: g["v"].sum(), df.groupby("k"), chunks=5, cluster=cluster, progress=False
    )
    got = dict(future.as_completed())
    assert sorted(got) == list(range(future.n_chunks))
    assert all(isinstance(part, GroupResults) for part in got.values())
    pairs = dict(pair for i in sorted(got) for pair in got[i].items())
    expected = df.groupby("k").apply(lambda g: g["v"].sum())
    pd.testing.assert_series_equal(pd.Series(pairs).rename_axis("k"), expected)
    pd.testing.assert_series_equal(future.result(timeout=BOUND), expected)
