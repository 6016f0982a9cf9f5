"""Awkward data, one regression test per kind of failure, on the session's real cluster.

Each test names what used to go wrong; ``strict.assert_exact`` compares with the
serial result (dtype, index type, names, freq, attrs, masks, fill values).
"""

from __future__ import annotations

import array
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


# -- 11. pandas arrays as the data -------------------------------------------------------------


def pandas_arrays() -> dict[str, Any]:
    """Every kind of pandas array a user meets, with a missing value where it has one."""
    stamps = pd.date_range("2024-03-09 20:00", periods=7, freq="h")
    arrays: dict[str, Any] = {
        "IntegerArray": pd.array([1, 2, None, 4, 5, None, 7], dtype="Int64"),
        "FloatingArray": pd.array([0.5, None, 2.0, 3.5, None, 5.0, 6.0], dtype="Float64"),
        "BooleanArray": pd.array([True, None, False, True, False, None, True], dtype="boolean"),
        "StringArray": pd.array(["a", None, "c", "", "é", "f", "g"], dtype="string[python]"),
        "DatetimeArray": stamps.array,
        "DatetimeArray tz": stamps.tz_localize("Europe/Berlin").array,
        "TimedeltaArray": pd.timedelta_range("1D", periods=7, freq="6h").array,
        "PeriodArray": pd.period_range("2020-01", periods=7, freq="M").array,
        "IntervalArray": pd.arrays.IntervalArray.from_breaks(range(8), closed="left"),
        "SparseArray": pd.arrays.SparseArray([0, 1, 0, 0, 2, 0, 3], fill_value=0),
        "Categorical": pd.Categorical(
            ["a", "b", "c", "a", "b", None, "a"], categories=list("zcba")
        ),
        "Categorical ordered": pd.Categorical(
            list("lhhlmlh"), categories=list("lmh"), ordered=True
        ),
        "NumpyExtensionArray": pd.arrays.NumpyExtensionArray(np.arange(7.0)),
    }
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return arrays
    arrays["ArrowStringArray"] = pd.array(["a", None, "c", "", "é", "f", "g"], dtype="str")
    arrays["ArrowExtensionArray"] = pd.array([1, None, 3, 4, 5, 6, 7], dtype="int64[pyarrow]")
    return arrays


ROW_WISE: dict[str, Callable[[Any], Any]] = {
    "identity": lambda c: c,
    "times two": lambda c: c * 2,
    "missing dropped": lambda c: c[~pd.isna(c)],
}


@pytest.mark.parametrize("name", list(pandas_arrays()))
def test_pandas_arrays_split_and_join_like_serial(
    cluster: celerynb.LocalCluster, name: str
) -> None:
    # Was: taken for an iterator of chunks, "an iterator's items are its chunks ... this
    # one gives a int64 first".
    arr = pandas_arrays()[name]
    for func in ROW_WISE.values():
        try:
            expected = func(arr)
        except TypeError:  # (no * 2 for dates, intervals, categories)
            continue
        for chunks in (1, 3):
            assert_exact(run(cluster, func, arr, chunks=chunks), expected)
    chunks_of = iter([arr[:3], arr[3:]])  # as an iterator's chunks too
    assert_exact(run(cluster, lambda c: c, chunks_of), arr)


# -- 12. masked arrays, matrices and NumPy strings ---------------------------------------------


def matrix(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # (NumPy recommends against np.matrix, users meet it)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix(values)


def numpy_arrays() -> dict[str, np.ndarray]:
    masked = np.ma.masked_array(np.arange(7.0), mask=[i % 3 == 0 for i in range(7)])
    masked.fill_value = -7.0
    hard = np.ma.masked_array(np.arange(7), mask=[i % 2 == 0 for i in range(7)], hard_mask=True)
    words = ["a", "bb", "", "é", "ccc", "d", "e"]
    arrays = {
        "masked": masked,
        "masked big-endian": masked.astype(">f8"),
        "masked hard mask": hard,
        "matrix": matrix(np.arange(14).reshape(7, 2)),
        "unicode": np.array(words),
        "bytes": np.array([w.encode() for w in words]),
    }
    if hasattr(np.dtypes, "StringDType"):  # NumPy 2
        arrays["StringDType"] = np.array(words, dtype=np.dtypes.StringDType())
        na = np.dtypes.StringDType(na_object=None)
        arrays["StringDType with NA"] = np.array([*words[:-1], None], dtype=na)
    return arrays


@pytest.mark.parametrize("name", list(numpy_arrays()))
def test_masked_arrays_matrices_and_strings_join_like_serial(
    cluster: celerynb.LocalCluster, name: str
) -> None:
    a = numpy_arrays()[name]
    for func in (lambda c: c, lambda c: c * 2, lambda c: c[::2]):
        try:
            expected = func(a)
        except TypeError:  # (no * 2 for NumPy strings)
            continue
        for chunks in (1, 3):
            assert_exact(run(cluster, func, a, chunks=chunks), expected)


# -- 13. sequence types are kept ---------------------------------------------------------------


def test_sequence_types_are_kept(cluster: celerynb.LocalCluster) -> None:
    # Was: a UserList came back a list, an array.array a list of array.array parts.
    users = collections.UserList(range(50))
    assert_exact(run(cluster, lambda c: c, users, chunks=2), users)
    doubles = array.array("d", [x / 4 for x in range(30)])
    out = run(cluster, lambda c: c, doubles, chunks=3)
    assert type(out) is array.array and out.typecode == "d" and out == doubles
    halves = run(cluster, lambda c: array.array("f", [x / 2 for x in c]), users, chunks=3)
    assert halves == array.array("f", [x / 2 for x in users])  # by the results' type
    deques = run(cluster, lambda c: collections.deque(c), list(range(9)), chunks=3)
    assert deques == collections.deque(range(9))
    assert run(cluster, lambda c: c.tolist(), doubles, chunks=3) == doubles.tolist()
    # parts of different types (or typecodes) stay apart, one per chunk
    mixed = run(cluster, lambda c: array.array("i" if c[0] else "q", c), [0, 1], chunks=2)
    assert [p.typecode for p in mixed] == ["q", "i"]
    with pytest.raises(TypeError, match=r"UserString: strings are not split into characters"):
        run(cluster, len, collections.UserString("abc"), chunks=2)


# -- 14. byte order after a column reversal ----------------------------------------------------


@pytest.mark.parametrize("rows", [6, 30_000], ids=["small, in the store", "big, in files"])
def test_big_endian_columns_reversed_keep_byte_order(
    cluster: celerynb.LocalCluster, rows: int
) -> None:
    # Was: '<f8': NumPy unpickles a strided array in native byte order.
    a = np.arange(rows * 2.0).reshape(rows, 2).astype(">f8")
    for func in (lambda c: c[:, ::-1], lambda c: c.T.copy().T, lambda c: c[:, :1]):
        assert_exact(run(cluster, func, a, chunks=3), func(a))
    reversed_data = a[:, ::-1]  # a strided input: its chunks keep the byte order too
    assert_exact(run(cluster, lambda c: c, reversed_data, chunks=3), reversed_data)
