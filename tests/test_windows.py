"""``overlap=`` for window functions, and the warning for per-chunk reductions.

On the session's real embedded cluster: ``cmap(lambda c: c.rolling(w)..., s,
overlap=w - 1, chunks=k)`` equals the serial ``rolling`` for Series and
DataFrames and any chunking (hypothesis); a func that reduces its chunk warns
(``ReductionWarning``), row-wise funcs and groupbys do not.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strict import assert_exact

import celerynb
from celerynb import ChunkError, ReductionWarning, cmap
from celerynb.join import warn_if_reduced

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ON_CLUSTER = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], *data: Any, **kw: Any) -> Any:
    return cmap(func, *data, cluster=cluster, progress=False, **kw)


# -- overlap= ----------------------------------------------------------------------------------


def test_rolling_mean_example(cluster: celerynb.LocalCluster) -> None:
    """The documented example: without overlap= every chunk starts with NaNs."""
    s = pd.Series(np.arange(40.0) ** 2, index=pd.date_range("2024-01-01", periods=40, freq="h"))
    expected = s.rolling(4).mean()
    assert_close(run(cluster, lambda c: c.rolling(4).mean(), s, overlap=3, chunks=5), expected)
    naive = run(cluster, lambda c: c.rolling(4).mean(), s, chunks=5)
    assert naive.isna().sum() == 5 * 3  # what overlap= is for


WINDOWS: dict[str, Callable[[Any, int], Any]] = {
    "mean": lambda c, w: c.rolling(w).mean(),
    "sum min_periods=1": lambda c, w: c.rolling(w, min_periods=1).sum(),
    "apply raw=False": lambda c, w: c.rolling(w).apply(lambda x: x.iloc[0] - x.iloc[-1], raw=False),
    "diff": lambda c, w: c.diff(w),
    "shift": lambda c, w: c.shift(w),
}


@ON_CLUSTER
@given(
    n=st.integers(1, 120),
    window=st.integers(1, 9),
    chunks=st.integers(1, 12),
    kind=st.sampled_from(list(WINDOWS)),
    frame=st.booleans(),
)
def test_overlap_equals_the_serial_window(
    cluster: celerynb.LocalCluster, n: int, window: int, chunks: int, kind: str, frame: bool
) -> None:
    rng = np.random.default_rng(n * 31 + window)
    index = pd.Index(rng.permutation(n) * 3, name="pos")  # unsorted labels: by position
    data: pd.Series | pd.DataFrame = pd.Series(rng.normal(size=n), index=index, name="x")
    if frame:
        data = pd.DataFrame({"x": data, "y": rng.integers(0, 9, n).astype(float)}, index=index)
    func = WINDOWS[kind]
    out = run(cluster, func, data, kwargs={"w": window}, overlap=window, chunks=chunks)
    assert_close(out, func(data, window))


def assert_close(out: Any, expected: Any) -> None:
    """Equal, up to the last bits of rolling sums: pandas keeps a running sum over the
    window, and a chunk's run starts at its carried rows, not at the data's start."""
    check = pd.testing.assert_frame_equal if isinstance(expected, pd.DataFrame) else None
    check = check or pd.testing.assert_series_equal
    check(out, expected, check_exact=False, rtol=1e-9, atol=1e-12, check_index_type=True)


def test_overlap_with_adaptive_chunks_arrays_and_several_inputs(
    cluster: celerynb.LocalCluster,
) -> None:
    s = pd.Series(np.sin(np.arange(5000.0)))
    assert_exact(run(cluster, lambda c: c.rolling(7).max(), s, overlap=6), s.rolling(7).max())
    a = np.arange(60.0) ** 1.5

    def moving(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.convolve(x - y, np.ones(3), "full")[: len(x)]

    out = run(cluster, moving, a, a[::-1].copy(), overlap=2, chunks=7)
    np.testing.assert_array_equal(out, moving(a, a[::-1]))
    # an overlap larger than a chunk reaches back over several chunks
    assert_exact(run(cluster, lambda c: c.cumsum(), s, overlap=5000, chunks=9), s.cumsum())


def test_overlap_refuses_what_it_cannot_do(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"k": [1, 1, 2], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ChunkError, match=r"overlap=2, func must return one row per row"):
        run(cluster, lambda c: c.sum(), df, overlap=2, chunks=2)
    with pytest.raises(ValueError, match=r"overlap= is for data split by rows"):
        run(cluster, lambda g: g, df.groupby("k"), overlap=1)
    with pytest.raises(ValueError, match=r"overlap= needs data of known length"):
        run(cluster, lambda c: c, iter([df, df]), overlap=1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"overlap must be an int >= 0"):
            run(cluster, lambda c: c, df, overlap=bad)
    assert_exact(run(cluster, lambda c: c, df, overlap=0), df)  # the cluster still works


# -- the warning for per-chunk reductions ------------------------------------------------------


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.normal(size=60), "b": rng.integers(0, 5, 60), "s": list("xyz") * 20}
    )


REDUCTIONS: dict[str, Callable[[pd.DataFrame], Any]] = {
    "apply by column": lambda c: c[["a", "b"]].apply(np.sum),
    "sum": lambda c: c[["a", "b"]].sum(),
    "describe": lambda c: c.describe(),
    "value_counts": lambda c: c["s"].value_counts(),
    "groupby in a chunk": lambda c: c.groupby("s")["a"].sum(),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_a_per_chunk_reduction_warns(cluster: celerynb.LocalCluster, name: str) -> None:
    with pytest.warns(ReductionWarning, match=r"reduction of its chunk.*reduce=.*df\.apply") as w:
        run(cluster, REDUCTIONS[name], frame(), chunks=4)
    assert w[0].filename == __file__  # at the user's line


ROW_WISE: dict[str, Callable[[pd.DataFrame], Any]] = {
    "apply axis=1": lambda c: c.apply(lambda r: r["a"] * r["b"], axis=1),
    "map": lambda c: c[["a"]].map(lambda x: x + 1),
    "filter": lambda c: c[c["b"] > 2],
    "shuffle": lambda c: c.sample(frac=1.0, random_state=1),
    "explode": lambda c: c.assign(t=[[1, 2]] * len(c)).explode("t"),
    "renumbered": lambda c: c.reset_index(drop=True),
    "index of numbers from a column": lambda c: c.set_index("b"),
}


@pytest.mark.parametrize("name", list(ROW_WISE))
def test_row_wise_funcs_and_groupbys_do_not_warn(cluster: celerynb.LocalCluster, name: str) -> None:
    df = frame()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReductionWarning)
        run(cluster, ROW_WISE[name], df, chunks=4)
        shuffled = df.sample(frac=1.0, random_state=2)  # labels that do not rise
        run(cluster, ROW_WISE[name], shuffled, chunks=4)
        run(cluster, lambda g: g["a"].describe(), df.groupby("s"), chunks=3)
        run(cluster, lambda c: c.describe(), df, chunks=1)  # one chunk: func(data) itself


def test_the_check_looks_only_at_what_can_repeat() -> None:
    source = pd.RangeIndex(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReductionWarning)
        warn_if_reduced([pd.Index(["a"]), pd.Index(["b"])], source)  # nothing repeats
        warn_if_reduced([pd.Index([3, 4]), pd.Index([4, 5])], source)  # the data's own labels
        warn_if_reduced([pd.Index(["a"] * 600_000), pd.Index(["a"] * 600_000)], source)
    with pytest.warns(ReductionWarning, match=r"\('a', 'b'\) in 2 chunks"):
        warn_if_reduced([pd.Index(["a", "b"]), pd.Index(["b", "a"])], source)
