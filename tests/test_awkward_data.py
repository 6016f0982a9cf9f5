"""Awkward data, one regression test per kind of failure, on the session's real cluster.

Each test names what used to go wrong; ``strict.assert_exact`` compares with the
serial result (dtype, index type, names, freq, attrs, masks, fill values).
"""

from __future__ import annotations

import collections
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, overload

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from strict import assert_exact

import celerynb
from celerynb import AlignmentWarning, cmap
from celerynb.groupby import GroupResults
from celerynb.planning import MAX_BLOCKS_MOVED, n_chunks_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60  # seconds any single call may take on a loaded machine


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], *data: Any, **kw: Any) -> Any:
    return cmap(func, *data, cluster=cluster, progress=False, **kw)


# -- 1. groupby keys that are not column names ---------------------------------------------------


def total(g: pd.DataFrame) -> Any:
    return g["v"].sum()


def key_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"v": np.arange(10.0), "w": np.arange(10) % 3},
        index=pd.Index([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], name="dup"),  # duplicate labels
    )


KEYS: dict[str, Callable[[pd.DataFrame], Any]] = {
    "array": lambda df: np.arange(len(df)) % 4,
    "list": lambda df: [f"k{i % 3}" for i in range(len(df))],
    "Index": lambda df: pd.Index(np.arange(len(df)) % 2 == 0),
    "Categorical": lambda df: pd.Categorical(np.arange(len(df)) % 2, categories=[1, 0, 7]),
    "Series on duplicate labels": lambda df: pd.Series(np.arange(len(df)) % 3, index=df.index),
    "Series of some rows": lambda df: pd.Series([1, 1, 2], index=[0, 2, 4]).rename("some"),
    "array with NaN": lambda df: np.where(
        np.arange(len(df)) % 4 == 0, np.nan, np.arange(len(df)) % 2
    ),
    "function of the label": lambda df: lambda label: label % 2,
    "dict of the labels": lambda df: {label: f"g{label % 3}" for label in df.index},
    "array and column": lambda df: [np.arange(len(df)) % 2, "w"],
}


@pytest.mark.parametrize("dropna", [True, False])
@pytest.mark.parametrize("key", list(KEYS))
def test_groupby_keys_that_are_not_column_names(
    cluster: celerynb.LocalCluster, key: str, dropna: bool
) -> None:
    # Was: each chunk regrouped with the full-length key: "ValueError: Grouper and axis
    # must be same length"; NaN-key rows vanished, duplicate labels failed to reindex.
    df = key_frame()
    grouped = df.groupby(KEYS[key](df), dropna=dropna)
    for chunks in (2, 3):
        assert_exact(run(cluster, total, grouped, chunks=chunks), grouped.apply(total))
        assert_exact(
            run(cluster, lambda g: g * 2, grouped, chunks=chunks), grouped.apply(lambda g: g * 2)
        )


def test_groupby_issue_repro_array_key(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"v": range(8)})
    grouped = df.groupby(np.arange(8) % 4)
    assert_exact(
        run(cluster, lambda g: g.v.sum(), grouped, chunks=2), grouped.apply(lambda g: g.v.sum())
    )


# -- 2. the result's shape depends on all groups -----------------------------------------------


def counts(g: pd.DataFrame) -> pd.Series:
    return g.x.value_counts()


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_groupby_shape_decided_from_all_groups(cluster: celerynb.LocalCluster, chunks: int) -> None:
    # Was: a Series from pandas, but a DataFrame with chunks=3 (each chunk's value_counts
    # had one index, so its apply stacked them) and "inconsistent types" with chunks=2.
    df = pd.DataFrame({"k": list("aabbcc"), "x": [1, 2, 1, 1, 2, 3]})
    grouped = df.groupby("k")
    expected = grouped.apply(counts)
    assert isinstance(expected, pd.Series)
    assert_exact(run(cluster, counts, grouped, chunks=chunks), expected)
    some_none = lambda g: None if g.name == "b" else g.x.sum()  # noqa: E731
    assert_exact(run(cluster, some_none, grouped, chunks=chunks), grouped.apply(some_none))
    frame_or_none = lambda g: None if g.name == "a" else g.head(1)  # noqa: E731
    assert_exact(run(cluster, frame_or_none, grouped, chunks=chunks), grouped.apply(frame_or_none))
    flat = df.groupby("k", as_index=False)
    assert_exact(run(cluster, counts, flat, chunks=chunks), flat.apply(counts))


# -- 3. the groupby join does not renumber rows ------------------------------------------------


def test_groupby_join_keeps_the_groups_numbering(cluster: celerynb.LocalCluster) -> None:
    # Was: every chunk's result had a RangeIndex from 0, so the join renumbered the rows
    # 0..4 where pandas gives [0, 1, 0, 1, 2].
    df = pd.DataFrame({"k": list("aabbb"), "x": range(5)})
    grouped = df.groupby("k", group_keys=False)
    renumber = lambda g: g.reset_index(drop=True)  # noqa: E731
    out = run(cluster, renumber, grouped, chunks=2)
    assert out.index.tolist() == [0, 1, 0, 1, 2]
    assert_exact(out, grouped.apply(renumber))


def test_row_split_renumbered_chunks_number_the_whole(cluster: celerynb.LocalCluster) -> None:
    """Row-split chunks that each number their rows afresh join numbered 0..n-1, as the
    serial ``reset_index`` numbers them."""
    df = pd.DataFrame({"x": range(7)}, index=list("abcdefg"))
    renumber = lambda d: d.reset_index(drop=True)  # noqa: E731
    assert_exact(run(cluster, renumber, df, chunks=3), renumber(df))
    assert_exact(
        run(cluster, lambda d: d.index, df.reset_index(drop=True), chunks=3), pd.RangeIndex(7)
    )


# -- 4. Index results keep their dtype ---------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [
        pd.Index(["a", "b", "c"], dtype=object),
        pd.Index([1, "b", 2.5], dtype=object, name="mixed"),
        pd.date_range("2024-01-01", periods=5, freq="h", tz="Europe/Berlin", name="t"),
        pd.CategoricalIndex(list("xyx"), categories=list("zyx")),
    ],
    ids=["object-str", "object-mixed", "datetime-freq", "categorical"],
)
def test_index_results_keep_their_dtype(cluster: celerynb.LocalCluster, index: pd.Index) -> None:
    # Was: Index.append re-inferred object labels as str (pandas-dev/pandas#60159).
    assert_exact(run(cluster, lambda c: c, index, chunks=2), index)


# -- 5. the NumPy join keeps byte order, subclass and fill value -------------------------------


def test_numpy_join_keeps_byte_order_subclass_and_fill_value(
    cluster: celerynb.LocalCluster,
) -> None:
    # Was: '>i4' came back '<i4', a masked array lost its fill value, a record array came
    # back a plain ndarray.
    big_endian = np.arange(9, dtype=">i4")
    masked = np.ma.masked_array(np.arange(9.0), mask=[i % 4 == 0 for i in range(9)])
    masked.fill_value = -7.0
    records = np.rec.fromarrays([np.arange(9), np.arange(9) / 2], names="a,b")
    for data in (big_endian, masked, records, big_endian.reshape(3, 3)):
        assert_exact(run(cluster, lambda a: a, data, chunks=2), data)
    out = run(cluster, lambda a: a * 1.0, masked, chunks=3)
    assert out.fill_value == -7.0


# -- 6. extension arrays, tuples and ranges are joined into one object -------------------------


def test_extension_arrays_tuples_and_ranges_join(cluster: celerynb.LocalCluster) -> None:
    # Was: a list of per-chunk pieces.
    s = pd.Series([1, 2, None, 4, 5], dtype="Int64")
    assert_exact(run(cluster, lambda c: c.array, s, chunks=2), s.array)
    cats = pd.Series(pd.Categorical(list("abcab"), categories=list("cba")))
    assert_exact(run(cluster, lambda c: c.array, cats, chunks=3), cats.array)
    assert_exact(run(cluster, lambda c: c, (1, "b", 3.0), chunks=2), (1, "b", 3.0))
    assert_exact(
        run(cluster, lambda c: tuple(c * 2), s.fillna(0), chunks=2), tuple(s.fillna(0) * 2)
    )
    assert_exact(run(cluster, lambda c: c, range(10), chunks=3), range(10))
    assert_exact(run(cluster, lambda c: c, range(5, 57, 4), chunks=4), range(5, 57, 4))
    # ranges that do not continue each other: their items, as a list
    assert run(cluster, lambda c: range(len(c)), range(4), chunks=2) == [0, 1, 0, 1]


# -- 7. attrs that hold arrays -----------------------------------------------------------------


def test_attrs_holding_arrays(cluster: celerynb.LocalCluster) -> None:
    # Was: "ValueError: The truth value of an array ... is ambiguous" from pandas comparing
    # attrs while concatenating (pandas-dev/pandas#59196).
    df = pd.DataFrame({"x": range(6)})
    df.attrs = {"weights": np.arange(3.0), "source": "s3"}
    out = run(cluster, lambda d: d * 2, df, chunks=3)
    assert_exact(out, df * 2)
    assert out.attrs["source"] == "s3"
    s = df["x"]
    assert_exact(run(cluster, lambda c: c + 1, s, chunks=2), s + 1)


# -- 8. clear errors ---------------------------------------------------------------------------


class SlicesOnlyAtZero(Sequence[int]):
    """A sequence whose slices fail past the start (a store failure that is not pickling)."""

    def __len__(self) -> int:
        return 4

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...
    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        if isinstance(i, slice):
            if i.start:
                raise IndexError("no slices here")
            return list(range(4))[i]
        return i


def test_clear_errors_for_unsliceable_data(cluster: celerynb.LocalCluster) -> None:
    # Was: "chunk 0 of 2 ... cannot be pickled (TypeError: sequence index must be integer,
    # not 'slice')" for a deque, and every store failure was called a pickling failure.
    with pytest.raises(TypeError, match=r"deque, which cannot be sliced.*list\(\.\.\.\)"):
        run(cluster, len, collections.deque([1, 2, 3]), chunks=2)
    with pytest.raises(TypeError, match=r"chunk 1 of 2 .* cannot be cut from the data") as info:
        run(cluster, len, SlicesOnlyAtZero(), chunks=2)
    assert "pickled" not in str(info.value)
    with pytest.raises(TypeError, match=r"chunk 0 of 1 .* cannot be pickled"):
        run(cluster, len, [lambda_lock()], chunks=1)
    assert run(cluster, len, [1, 2, 3], chunks=3) == [1, 1, 1]  # the cluster still works


def lambda_lock() -> Any:
    import threading

    return threading.Lock()


# -- 9. several pandas inputs with different indexes -------------------------------------------


def test_inputs_with_different_indexes_warn(cluster: celerynb.LocalCluster) -> None:
    # Was: zipped by position while func aligned them by label, silently (8 rows, not 4).
    x = pd.Series([1, 2, 3, 4], index=list("abcd"))
    with pytest.warns(AlignmentWarning, match=r"inputs 0 and 1 have different indexes") as info:
        run(cluster, lambda p, q: p + q, x, x[::-1], chunks=2)
    message = str(info[0].message)
    assert "position 0: 'a' vs 'd'" in message and ".reindex(" in message
    assert info[0].filename == __file__  # points at the call, not at celerynb
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same index, or no index at all: no warning
        assert_exact(run(cluster, lambda p, q: p + q, x, x * 2, chunks=2), x + x * 2)
        run(cluster, lambda p, a: p * a, x, np.arange(4), chunks=2)


# -- 10. wide frames ---------------------------------------------------------------------------


def test_wide_frames_are_cut_into_fewer_chunks(cluster: celerynb.LocalCluster) -> None:
    # Was: 30 rows x 2,000 columns (1,000 string columns, a block each) took ~2 s with the
    # default 8 chunks, mostly moving and concatenating 1,000 blocks per chunk.
    rng = np.random.default_rng(0)
    columns = {}
    for i in range(2000):
        columns[f"c{i}"] = (
            rng.normal(size=30) if i % 2 else pd.array([f"s{j}" for j in range(30)], dtype="str")
        )
    wide = pd.DataFrame(columns)
    future = celerynb.cmap_async(lambda d: d, wide, cluster=cluster, progress=False)
    assert future.n_chunks == cluster.n_workers
    assert_exact(future.result(timeout=BOUND), wide)
    assert n_chunks_for(30, 2, blocks=1) == 8
    assert n_chunks_for(30, 2, blocks=MAX_BLOCKS_MOVED // 8) == 8
    assert n_chunks_for(30, 2, blocks=MAX_BLOCKS_MOVED // 3) == 3
    assert n_chunks_for(30, 2, blocks=1001) == 2
    assert n_chunks_for(30, 2, blocks=1001, chunks=8) == 8  # chunks= still wins


# -- what a groupby chunk's result is (streaming and reduce=) ----------------------------------


def test_groupby_chunk_results_name_their_groups(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"k": list("aabbccd"), "v": np.arange(7.0)})
    grouped = df.groupby("k")
    future = celerynb.cmap_async(total, grouped, chunks=2, cluster=cluster, progress=False)
    parts = dict(future.as_completed(timeout=BOUND))
    assert all(isinstance(p, GroupResults) for p in parts.values())
    pairs = [pair for i in sorted(parts) for pair in parts[i].items()]
    assert pairs == list(grouped.apply(total).items())

    def merge(chunk_results: list[GroupResults]) -> dict[str, float]:
        return {k: float(v) for part in chunk_results for k, v in part.items()}

    out = run(cluster, total, grouped, chunks=3, reduce=merge)
    assert out == {"a": 1.0, "b": 5.0, "c": 9.0, "d": 6.0}
