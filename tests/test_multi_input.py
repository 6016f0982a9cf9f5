"""Several inputs: ``cmap(f, a, b)`` zips equal-length inputs chunk by chunk.

Checked on the session's real embedded cluster: the result equals the serial
zip-wise result for lists, arrays, frames and mixes; unequal lengths and a
groupby with other inputs are refused before anything starts; ``args=`` /
``kwargs=`` reach func and are stored once per call (in the call's func key),
not once per chunk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest

import celerynb
from celerynb import cmap
from celerynb.plane.keys import CallKeys

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60  # seconds any single call may take on a loaded machine
N = 23  # items: prime, so no chunk count divides it evenly


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], *data: Any, **kw: Any) -> Any:
    return cmap(func, *data, cluster=cluster, progress=False, **kw)


def add_lists(xs: list[int], ys: list[int]) -> list[int]:
    assert len(xs) == len(ys)
    return [x + y for x, y in zip(xs, ys, strict=True)]


def weighted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b[:, None]


def add_frames(d1: pd.DataFrame, d2: pd.DataFrame) -> pd.DataFrame:
    assert d1.index.equals(d2.index)
    return d1 + d2


def frame_and_array(df: pd.DataFrame, arr: np.ndarray) -> pd.DataFrame:
    assert len(df) == len(arr)
    return df.assign(z=df["x"] * arr)


def three(xs: list[str], a: np.ndarray, s: pd.Series) -> list[str]:
    return [f"{x}:{int(v)}:{w}" for x, v, w in zip(xs, a, s, strict=True)]


@pytest.mark.parametrize("chunking", [{"chunks": 1}, {"chunks": 4}, {"chunk_size": 5}, {}])
def test_lists(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    xs, ys = list(range(N)), [10 * i for i in range(N)]
    assert run(cluster, add_lists, xs, ys, **chunking) == add_lists(xs, ys)


def test_tuple_and_range(cluster: celerynb.LocalCluster) -> None:
    xs, ys = tuple(range(N)), range(100, 100 + N)
    assert run(
        cluster, lambda a, b: [x * y for x, y in zip(a, b, strict=True)], xs, ys, chunks=5
    ) == [x * y for x, y in zip(xs, ys, strict=True)]


def test_arrays(cluster: celerynb.LocalCluster) -> None:
    a = np.arange(N * 3, dtype=np.float32).reshape(N, 3)
    b = np.linspace(0, 1, N)
    out = run(cluster, weighted, a, b, chunks=4)
    expected = weighted(a, b)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected, strict=True)


def test_frames(cluster: celerynb.LocalCluster) -> None:
    index = pd.Index([f"r{i}" for i in range(N)], name="row")
    d1 = pd.DataFrame({"x": np.arange(N), "y": np.arange(N) * 0.5}, index=index)
    d2 = pd.DataFrame({"x": np.arange(N) * 3, "y": np.ones(N)}, index=index)
    out = run(cluster, add_frames, d1, d2, chunks=4)
    pd.testing.assert_frame_equal(out, add_frames(d1, d2), check_exact=True)


def test_frame_and_array(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"x": np.arange(N, dtype=np.int64)}, index=np.arange(N)[::-1])
    arr = np.arange(N, dtype=np.int64) % 4
    out = run(cluster, frame_and_array, df, arr, chunks=4)
    pd.testing.assert_frame_equal(out, frame_and_array(df, arr), check_exact=True)


def test_three_kinds(cluster: celerynb.LocalCluster) -> None:
    xs = [chr(ord("a") + i % 26) for i in range(N)]
    a = np.arange(N)
    s = pd.Series(np.arange(N) * 2, index=np.arange(N) + 1000)
    assert run(cluster, three, xs, a, s, chunks=6) == three(xs, a, s)


def test_chunks_see_the_same_positions(cluster: celerynb.LocalCluster) -> None:
    """Each chunk gets the same positions of every input (checked on the worker)."""

    def check(xs: list[int], arr: np.ndarray, df: pd.DataFrame) -> list[int]:
        assert list(arr) == xs and df["p"].tolist() == xs, (xs, arr, df)
        return [len(xs)]

    sizes = run(cluster, check, list(range(N)), np.arange(N), pd.DataFrame({"p": range(N)}))
    assert sum(sizes) == N and len(sizes) == cluster.n_workers  # small: one per worker
    sizes = run(
        cluster, check, list(range(N)), np.arange(N), pd.DataFrame({"p": range(N)}), chunks=7
    )
    assert sum(sizes) == N and len(sizes) == 7


@pytest.mark.parametrize(
    ("inputs", "lengths"),
    [
        (([1, 2, 3], [1, 2, 3, 4]), "[3, 4]"),
        ((np.arange(5), pd.DataFrame({"a": range(4)})), "[5, 4]"),
        (([1, 2], [1, 2], [1]), "[2, 2, 1]"),
        (([], [1]), "[0, 1]"),
    ],
)
def test_unequal_lengths(cluster: celerynb.LocalCluster, inputs: tuple, lengths: str) -> None:
    with pytest.raises(ValueError, match="different lengths") as info:
        run(cluster, lambda *xs: xs, *inputs)
    assert lengths in str(info.value)


def test_groupby_with_another_input(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"k": [1, 1, 2], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(TypeError, match="groupby cannot be combined"):
        run(cluster, lambda g, x: g, df.groupby("k"), [1, 2])
    with pytest.raises(TypeError, match="groupby cannot be combined"):
        run(cluster, lambda x, g: g, [1, 2], df.groupby("k"))


# -- args= and kwargs= --------------------------------------------------------------


def scaled(xs: list[int], factor: int, offset: int = 0, *, label: str = "") -> list[str]:
    return [f"{label}{x * factor + offset}" for x in xs]


def test_args_and_kwargs_reach_func(cluster: celerynb.LocalCluster) -> None:
    xs = list(range(N))
    out = run(cluster, scaled, xs, args=(3, 1), kwargs={"label": "#"}, chunks=5)
    assert out == scaled(xs, 3, 1, label="#")
    assert run(cluster, scaled, xs, args=(2,), chunks=5) == scaled(xs, 2)
    assert run(cluster, scaled, xs, args=[2], chunks=5) == scaled(xs, 2)


def test_args_with_several_inputs(cluster: celerynb.LocalCluster) -> None:
    def f(a: list[int], b: list[int], c: int, *, d: int) -> list[int]:
        return [x * c + y * d for x, y in zip(a, b, strict=True)]

    a, b = list(range(N)), list(range(N, 2 * N))
    assert run(cluster, f, a, b, args=(2,), kwargs={"d": -1}, chunks=4) == f(a, b, 2, d=-1)


def test_kwargs_with_groupby(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"k": [1, 2, 1, 3, 2], "v": [1.0, 2.0, 3.0, 4.0, 5.0]})

    def f(g: pd.DataFrame, power: int, *, shift: float) -> float:
        return float((g["v"] ** power).sum() + shift)

    out = run(cluster, f, df.groupby("k"), args=(2,), kwargs={"shift": 0.5}, chunks=2)
    pd.testing.assert_series_equal(out, df.groupby("k").apply(f, 2, shift=0.5))


def test_bad_args_kinds(cluster: celerynb.LocalCluster) -> None:
    with pytest.raises(TypeError, match="args= must be a tuple"):
        run(cluster, scaled, [1, 2], args=3)
    with pytest.raises(TypeError, match="kwargs= a dict"):
        run(cluster, scaled, [1, 2], kwargs=[("label", "x")])


def gated(xs: list[int], blob: bytes, gate: str) -> list[int]:
    """Wait (at most 60 s) until the test creates ``gate``; return the blob's size."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [len(blob)] * len(xs)


def test_args_are_shipped_once_per_call(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    """An 8 MiB args= value is stored once, in the call's func key, and not per chunk.

    While every chunk waits on a gate file, the func key holds the value once and
    neither the chunk keys nor the task messages hold a copy. Over the whole call
    Redis sends the workers a few copies at most (one per pool process), not one
    per chunk (40 chunks would be 320 MiB).
    """
    size, n_chunks = 8 * 2**20, 40
    blob = os.urandom(size)
    gate = tmp_path / "go"
    r = cluster.redis
    sent_before = r.info("stats")["total_net_output_bytes"]
    future = celerynb.cmap_async(
        gated,
        list(range(n_chunks)),
        args=(blob,),
        kwargs={"gate": str(gate)},
        chunks=n_chunks,
        cluster=cluster,
        progress=False,
    )
    try:
        keys = CallKeys(future.id)
        func_bytes = r.strlen(keys.func)
        assert size <= func_bytes < size + 2**20, func_bytes
        chunk_bytes = [r.strlen(keys.chunk(i)) for i in range(n_chunks)]
        assert all(chunk_bytes)  # none can finish before the gate opens
        assert max(chunk_bytes) < 2**10, max(chunk_bytes)
        queue = cluster.settings.queue
        others = [
            key
            for pattern in (keys.base.replace("{", "[{]") + "*", queue + "*", "unacked*")
            for key in r.scan_iter(match=pattern, count=1000)
            if key != keys.func.encode()
        ]
        # the chunks wait as numbers in the call's pending list
        assert n_chunks - cluster.n_workers <= r.llen(keys.pending) <= n_chunks
        held = sum(r.memory_usage(key, samples=0) or 0 for key in others)
        assert held < 2**20, held
    finally:
        gate.touch()
    assert future.result(timeout=BOUND) == [size] * n_chunks
    sent = r.info("stats")["total_net_output_bytes"] - sent_before
    # Was: every chunk's claim (store.CLAIM, `redis.call('GET', KEYS[2])`) returns the
    # whole job, although the worker already holds it in worker._jobs: args= travel
    # from Redis to the workers once per chunk (here 40 x 8 MiB).
    assert sent < 5 * size, f"Redis sent {sent / 2**20:.0f} MiB for a call with 8 MiB args="
