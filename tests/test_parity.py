"""Parity: ``cmap(f, data)`` equals the serial ``f(data)`` for a row-wise ``f``.

Every test runs on the session's real embedded cluster (redis-server plus Celery
prefork workers) and compares with exact dtype, index and shape checks. The join
rule and the default chunking are those stated in ``celerynb/chunking.py``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

import celerynb
from celerynb import cmap

# The workers cannot import this test module: ship its functions by value, as
# cloudpickle does for functions defined in a notebook.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 13  # rows: prime, so no chunk count divides it evenly

# chunks=1, 2, more chunks than workers, more chunks than rows (capped), chunk_size, default
CHUNKINGS: list[dict[str, int]] = [
    {"chunks": 1},
    {"chunks": 2},
    {"chunks": 7},
    {"chunks": 1000},
    {"chunk_size": 3},
    {"chunk_size": 1000},
    {},
]
CHUNK_IDS = ["chunks=1", "chunks=2", "chunks=7", "chunks=1000", "size=3", "size=1000", "default"]
# a cheaper subset for the wide matrices: several chunks, more than workers, capped
FEW_CHUNKINGS: list[dict[str, int]] = [{"chunks": 3}, {"chunks": 1000}]
FEW_IDS = ["chunks=3", "chunks=1000"]

parametrize_chunking = pytest.mark.parametrize("chunking", CHUNKINGS, ids=CHUNK_IDS)
parametrize_few_chunkings = pytest.mark.parametrize("chunking", FEW_CHUNKINGS, ids=FEW_IDS)


def expected_n_chunks(n_items: int, n_workers: int, chunking: dict[str, int]) -> int:
    """The chunk count the module docstring of celerynb.chunking promises (small data)."""
    if "chunks" in chunking:
        wanted = chunking["chunks"]
    elif "chunk_size" in chunking:
        wanted = math.ceil(n_items / chunking["chunk_size"])
    else:  # small data (under 64 items per worker): one chunk per worker
        wanted = n_workers if n_items < 64 * n_workers else 4 * n_workers
    return max(1, min(wanted, n_items))


def run(cluster: celerynb.LocalCluster, func: Callable[[Any], Any], data: Any, **kw: Any) -> Any:
    return cmap(func, data, cluster=cluster, progress=False, **kw)


# -- exact comparisons ---------------------------------------------------------


def assert_same(out: Any, expected: Any) -> None:
    """Equal value, type, dtype, index, names and shape."""
    assert type(out) is type(expected), f"{type(out).__name__} != {type(expected).__name__}"
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(
            out, expected, check_exact=True, check_index_type=True, check_column_type=True
        )
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(out, expected, check_exact=True, check_index_type=True)
    elif isinstance(expected, np.ndarray):
        assert out.dtype == expected.dtype
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out, expected, strict=True)
        if isinstance(expected, np.ma.MaskedArray):
            np.testing.assert_array_equal(np.ma.getmaskarray(out), np.ma.getmaskarray(expected))
    else:
        assert out == expected
        if isinstance(expected, list):
            assert [type(x) for x in out] == [type(x) for x in expected]


# -- data ----------------------------------------------------------------------


def dtype_frame(n: int = N) -> pd.DataFrame:
    """One column per dtype of interest, with missing values where the dtype has them."""
    words = ["alpha", "beta", None, "delta", "Eps"]
    tz_times = pd.Series(
        pd.date_range("2024-03-09 22:00", periods=n, freq="47min", tz="US/Eastern")
    )
    tz_times.iloc[3] = pd.NaT
    return pd.DataFrame(
        {
            "cat": pd.Categorical(
                [["x", "y", "z"][i % 3] for i in range(n)], categories=["z", "y", "x", "unused"]
            ),
            "ordered": pd.Categorical(
                [["lo", "hi"][i % 2] for i in range(n)], categories=["lo", "hi"], ordered=True
            ),
            "tz": tz_times,
            "naive": pd.date_range("2000-01-01", periods=n, freq="D"),
            "obj_str": pd.Series([words[i % 5] for i in range(n)], dtype=object),
            "string": pd.Series([words[i % 5] for i in range(n)], dtype="string"),
            "str": pd.Series([f"s{i}" for i in range(n)], dtype="str"),
            "Int64": pd.array([None if i % 4 == 0 else i * 10 for i in range(n)], dtype="Int64"),
            "float": [np.nan if i % 6 == 0 else i / 7 for i in range(n)],
            "float32": np.arange(n, dtype=np.float32) / 3,
            "int": np.arange(n, dtype=np.int64) - 5,
            "uint8": np.arange(n, dtype=np.uint8),
            "bool": [i % 3 == 0 for i in range(n)],
            "boolean": pd.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)], "boolean"),
        }
    )


def rowwise_frame(d: pd.DataFrame) -> pd.DataFrame:
    """A row-wise function whose output dtypes do not depend on the chunk's contents."""
    out = d.copy()
    out["int2"] = d["int"] * 2
    out["Int64_plus"] = d["Int64"] + 1
    out["float_sq"] = d["float"] ** 2
    out["not_bool"] = ~d["bool"]
    out["string_up"] = d["string"].str.upper()
    out["obj_up"] = d["obj_str"].str.upper()
    out["tz_later"] = d["tz"] + pd.Timedelta("90min")
    out["cat_code"] = d["cat"].cat.codes
    return out


def with_index(kind: str, n: int = N) -> pd.Index:
    if kind == "range":
        return pd.RangeIndex(n)
    if kind == "range_step":
        return pd.RangeIndex(100, 100 + 3 * n, 3)
    if kind == "non_unique":
        return pd.Index([i // 3 for i in range(n)][::-1])
    if kind == "multi":
        return pd.MultiIndex.from_arrays(
            [[["a", "b"][i % 2] for i in range(n)], [i // 2 for i in range(n)]],
            names=["letter", "num"],
        )
    if kind == "datetime":
        return pd.date_range("2024-01-01", periods=n, freq="h", name="when")
    if kind == "datetime_tz":  # crosses the 2024 DST change in Europe
        return pd.date_range("2024-03-30 20:00", periods=n, freq="h", tz="Europe/Berlin")
    if kind == "str_object":
        return pd.Index([f"row{i}" for i in range(n)], dtype=object)
    if kind == "str":
        return pd.Index([f"row{i}" for i in range(n)], dtype="str")
    if kind == "string":
        return pd.Index([f"row{i}" for i in range(n)], dtype="string")
    if kind == "categorical":
        return pd.CategoricalIndex([["p", "q"][i % 2] for i in range(n)])
    raise AssertionError(kind)


INDEX_KINDS = [
    "range",
    "range_step",
    "non_unique",
    "multi",
    "datetime",
    "datetime_tz",
    "str",
    "string",
    "categorical",
]


# -- DataFrames ----------------------------------------------------------------


@parametrize_chunking
def test_dataframe_parity_every_chunking(
    cluster: celerynb.LocalCluster, chunking: dict[str, int]
) -> None:
    df = dtype_frame()
    expected = rowwise_frame(df)
    out = run(cluster, rowwise_frame, df, **chunking)
    assert_same(out, expected)
    assert list(out.dtypes) == list(expected.dtypes)


@pytest.mark.parametrize("index_kind", INDEX_KINDS)
@parametrize_few_chunkings
def test_dataframe_parity_index_kinds(
    cluster: celerynb.LocalCluster, index_kind: str, chunking: dict[str, int]
) -> None:
    df = dtype_frame().set_axis(with_index(index_kind), axis=0)
    expected = rowwise_frame(df)
    out = run(cluster, rowwise_frame, df, **chunking)
    assert_same(out, expected)
    assert out.index.dtype == df.index.dtype


# Was (celerynb/chunking.py, join(): `return _pandas().concat(parts)`): pandas 3 infers a
# new dtype when it appends object-dtype indexes (pandas-dev/pandas#60159, open, milestone
# 4.0), so an object index of strings comes back as dtype "str" and one of ints as int64,
# even with chunks=1, while the serial f(df) keeps dtype object. Fix: after the concat,
#     first = parts[0].index
#     if out.index.dtype != first.dtype and all(p.index.dtype == first.dtype for p in parts):
#         out.index = out.index.astype(first.dtype)
@pytest.mark.parametrize(
    "labels",
    [[f"row{i}" for i in range(N)], list(range(100, 100 + N)), ["a", 1, 2.5, None] * 3 + ["z"]],
    ids=["strings", "ints", "mixed"],
)
@pytest.mark.parametrize("chunks", [1, 4])
def test_object_index_keeps_dtype(
    cluster: celerynb.LocalCluster, labels: list[Any], chunks: int
) -> None:
    df = dtype_frame().set_axis(pd.Index(labels, dtype=object, name="key"), axis=0)
    assert df.index.dtype == object
    out = run(cluster, rowwise_frame, df, chunks=chunks)
    assert out.index.dtype == object
    assert_same(out, rowwise_frame(df))
    s = df["float"]
    assert_same(run(cluster, lambda x: x * 2, s, chunks=chunks), s * 2)


@parametrize_few_chunkings
def test_dataframe_multiindex_columns(
    cluster: celerynb.LocalCluster, chunking: dict[str, int]
) -> None:
    df = pd.DataFrame(
        np.arange(N * 4, dtype=np.int32).reshape(N, 4),
        columns=pd.MultiIndex.from_product([["a", "b"], ["x", "y"]]),
    )

    def f(d: pd.DataFrame) -> pd.DataFrame:
        return d * 2 + 1

    assert_same(run(cluster, f, df, **chunking), f(df))


@pytest.mark.parametrize("chunks", [2, 1000])
def test_dataframe_returning_series(cluster: celerynb.LocalCluster, chunks: int) -> None:
    df = dtype_frame().set_axis(with_index("datetime_tz"), axis=0)

    def f(d: pd.DataFrame) -> pd.Series:
        return (d["int"] * d["float"]).rename("product")

    assert_same(run(cluster, f, df, chunks=chunks), f(df))


@pytest.mark.parametrize("chunks", [3, 1000])
def test_dataframe_row_filter(cluster: celerynb.LocalCluster, chunks: int) -> None:
    """A filter is row-wise too: chunks may come back empty or whole."""
    df = dtype_frame().set_axis(with_index("non_unique"), axis=0)

    def f(d: pd.DataFrame) -> pd.DataFrame:
        return d[d["int"] % 4 == 0]

    assert_same(run(cluster, f, df, chunks=chunks), f(df))


@pytest.mark.parametrize("chunks", [1, 5])
def test_dataframe_to_ndarray(cluster: celerynb.LocalCluster, chunks: int) -> None:
    df = dtype_frame()

    def f(d: pd.DataFrame) -> np.ndarray:
        return d[["int", "float32"]].to_numpy()

    assert_same(run(cluster, f, df, chunks=chunks), f(df))


# -- Series --------------------------------------------------------------------


SERIES_COLUMNS = list(dtype_frame().columns)


@pytest.mark.parametrize("column", SERIES_COLUMNS)
@pytest.mark.parametrize("chunks", [1, 4])
def test_series_roundtrip_every_dtype(
    cluster: celerynb.LocalCluster, column: str, chunks: int
) -> None:
    s = dtype_frame()[column].rename(f"named_{column}").set_axis(with_index("multi"))

    def f(x: pd.Series) -> pd.Series:
        return x.copy()

    out = run(cluster, f, s, chunks=chunks)
    assert_same(out, f(s))
    assert out.name == f"named_{column}"


@parametrize_chunking
def test_series_rowwise(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    s = pd.Series(
        [None if i % 4 == 0 else f"v{i}" for i in range(N)],
        dtype="string",
        name="words",
        index=with_index("datetime_tz"),
    )

    def f(x: pd.Series) -> pd.Series:
        return x.str.upper().str.len().rename("length")

    expected = f(s)
    assert str(expected.dtype) == "Int64"
    assert_same(run(cluster, f, s, **chunking), expected)


# -- NumPy ---------------------------------------------------------------------


ARRAYS: dict[str, np.ndarray] = {
    "float_1d": np.linspace(-1, 1, N),
    "int_1d": np.arange(N, dtype=np.int16) - 7,
    "float_2d": np.arange(N * 3, dtype=np.float32).reshape(N, 3) / 7,
    "int_2d": np.arange(N * 4, dtype=np.int64).reshape(N, 4),
    "int_3d": np.arange(N * 6, dtype=np.uint32).reshape(N, 2, 3),
    "fortran_2d": np.asfortranarray(np.arange(N * 5, dtype=np.float64).reshape(N, 5)),
    "bool_1d": np.arange(N) % 3 == 0,
    "unicode": np.array([f"w{i}" for i in range(N)], dtype="<U4"),
    "datetime64": np.arange(N).astype("datetime64[s]"),
    "complex": np.arange(N) * (1 + 2j),
    "structured": np.array(
        [(i, i / 4, f"r{i}".encode()) for i in range(N)],
        dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S4")],
    ),
    "object": np.array([{"k": i} if i % 2 else (i,) for i in range(N)], dtype=object),
}


def rowwise_array(a: np.ndarray) -> np.ndarray:
    """Row-wise for any dtype: flip the trailing axes, or transform the values."""
    if a.dtype.names:
        out = a.copy()
        out["f"] = out["f"] * 2
        out["i"] = out["i"] - 1
        return out
    if a.dtype.kind in "iufc":
        return a * 3 - a // 2 if a.dtype.kind in "iu" else a * 3 - 1
    if a.dtype.kind == "M":
        return a + np.timedelta64(5, "m")
    if a.ndim > 1:
        return np.flip(a, axis=tuple(range(1, a.ndim)))
    return a.copy()


@pytest.mark.parametrize("name", list(ARRAYS))
@parametrize_few_chunkings
def test_ndarray_parity(
    cluster: celerynb.LocalCluster, name: str, chunking: dict[str, int]
) -> None:
    a = ARRAYS[name]
    expected = rowwise_array(a)
    out = run(cluster, rowwise_array, a, **chunking)
    assert_same(out, expected)


@pytest.mark.parametrize("name", ["float_1d", "int_3d", "structured"])
@parametrize_chunking
def test_ndarray_parity_every_chunking(
    cluster: celerynb.LocalCluster, name: str, chunking: dict[str, int]
) -> None:
    a = ARRAYS[name]
    assert_same(run(cluster, rowwise_array, a, **chunking), rowwise_array(a))


@pytest.mark.parametrize("chunks", [1, 4, 1000])
def test_ndarray_trailing_shape_changes(cluster: celerynb.LocalCluster, chunks: int) -> None:
    a = np.arange(N * 6, dtype=np.int8).reshape(N, 2, 3)

    def f(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), 6).astype(np.float16)

    out = run(cluster, f, a, chunks=chunks)
    assert out.shape == (N, 6)
    assert_same(out, f(a))


# Was (celerynb/chunking.py, join(), `return _numpy().concatenate(parts, axis=0)`):
# np.concatenate drops the masks of MaskedArray results, so masked entries come back
# unmasked. Fix: use np.ma.concatenate when any part is an np.ma.MaskedArray.
@pytest.mark.parametrize("chunks", [1, 3])
def test_masked_array_keeps_mask(cluster: celerynb.LocalCluster, chunks: int) -> None:
    a = np.ma.masked_array(np.arange(N, dtype=float), mask=[i % 3 == 0 for i in range(N)])

    def f(x: np.ndarray) -> np.ndarray:
        return x * 2

    out = run(cluster, f, a, chunks=chunks)
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), np.ma.getmaskarray(f(a)))
    assert_same(out, f(a))


# -- sequences -----------------------------------------------------------------


@parametrize_chunking
def test_list_results_concatenated(
    cluster: celerynb.LocalCluster, chunking: dict[str, int]
) -> None:
    data = [{"id": i, "name": f"n{i}"} for i in range(N)]

    def f(rows: list[dict[str, Any]]) -> list[str]:
        return [f"{r['name']}:{r['id'] ** 2}" for r in rows]

    assert_same(run(cluster, f, data, **chunking), f(data))


@pytest.mark.parametrize(
    "data",
    [tuple(f"t{i}" for i in range(N)), range(5, 5 + 4 * N, 4)],
    ids=["tuple", "range"],
)
@parametrize_chunking
def test_tuple_and_range_inputs(
    cluster: celerynb.LocalCluster, data: Any, chunking: dict[str, int]
) -> None:
    def f(xs: Any) -> list[Any]:
        return [x * 2 for x in xs]

    expected = f(data)
    out = run(cluster, f, data, **chunking)
    assert_same(out, expected)
    assert len(out) == len(data)


# -- one result per chunk --------------------------------------------------------


@parametrize_chunking
def test_scalar_per_chunk(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    data = list(range(N))
    out = run(cluster, len, data, **chunking)
    n_chunks = expected_n_chunks(N, cluster.n_workers, chunking)
    assert isinstance(out, list)
    assert len(out) == n_chunks
    assert sum(out) == N
    assert all(isinstance(x, int) and x >= 1 for x in out)
    assert max(out) - min(out) <= 1  # balanced
    if "chunk_size" in chunking:
        assert max(out) <= chunking["chunk_size"]


@pytest.mark.parametrize("chunks", [1, 2, 7, 1000])
def test_dict_per_chunk_in_order(cluster: celerynb.LocalCluster, chunks: int) -> None:
    """Chunk results come back in chunk order, and the chunks tile the data."""
    df = dtype_frame().set_axis(with_index("str_object"), axis=0)

    def f(d: pd.DataFrame) -> dict[str, Any]:
        return {"first": d.index[0], "last": d.index[-1], "n": len(d), "sum": int(d["int"].sum())}

    out = run(cluster, f, df, chunks=chunks)
    assert isinstance(out, list)
    assert len(out) == min(chunks, N)
    assert all(isinstance(x, dict) for x in out)
    labels = list(df.index)
    pos = 0
    for part in out:
        assert part["first"] == labels[pos]
        pos += part["n"]
        assert part["last"] == labels[pos - 1]
    assert pos == N
    assert sum(p["sum"] for p in out) == int(df["int"].sum())


@pytest.mark.parametrize("chunks", [2, 7])
def test_numpy_scalar_and_tuple_per_chunk(cluster: celerynb.LocalCluster, chunks: int) -> None:
    a = ARRAYS["int_2d"]
    sums = run(cluster, np.sum, a, chunks=chunks)
    assert isinstance(sums, list)
    assert len(sums) == chunks
    assert all(isinstance(x, np.integer) for x in sums)
    assert sum(sums) == a.sum()

    def shape(x: np.ndarray) -> tuple[int, ...]:
        return x.shape

    # tuples are sequences: concatenated like lists, in chunk order
    shapes = run(cluster, shape, a, chunks=chunks)
    assert isinstance(shapes, tuple)
    assert shapes[1::2] == (4,) * chunks
    assert sum(shapes[::2]) == N


def test_default_chunking(cluster: celerynb.LocalCluster) -> None:
    n_workers = cluster.n_workers
    assert n_workers == 2
    assert len(run(cluster, len, list(range(100)))) == n_workers  # small: one per worker
    assert len(run(cluster, len, list(range(200)), reduce=lambda parts: parts)) == 4 * n_workers
    assert run(cluster, len, [1]) == [1]  # never more chunks than items


# -- empty inputs --------------------------------------------------------------


EMPTY_CASES: list[tuple[str, Any, Callable[[Any], Any]]] = [
    ("frame", dtype_frame().iloc[:0], rowwise_frame),
    ("frame_no_columns", pd.DataFrame(index=pd.RangeIndex(0)), lambda d: d.copy()),
    ("series", pd.Series([], dtype="Int64", name="s"), lambda s: s + 1),
    ("list", [], lambda xs: [x + 1 for x in xs]),
    ("tuple", (), lambda xs: [x + 1 for x in xs]),
    ("range", range(0), lambda xs: [x + 1 for x in xs]),
    ("array_1d", np.array([], dtype=np.int32), lambda a: a * 2),
    ("array_2d", np.zeros((0, 3), dtype=np.float32), rowwise_array),
    ("structured", ARRAYS["structured"][:0], rowwise_array),
]


@pytest.mark.parametrize(
    ("data", "func"), [c[1:] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES]
)
@pytest.mark.parametrize("chunks", [None, 3])
def test_empty_input(
    cluster: celerynb.LocalCluster, data: Any, func: Callable[[Any], Any], chunks: int | None
) -> None:
    expected = func(data)
    out = run(cluster, func, data, chunks=chunks)
    assert_same(out, expected)
    assert len(out) == 0


# Was (celerynb/api.py, _empty_result()): on empty data it returns func(data) bare, so a
# function that returns a scalar / dict per chunk gives that bare value (cmap(len, []) == 0)
# instead of a list, as the join rule says for every other input. Fix: treat empty data as
# one (empty) chunk and join it like any other call:
#     value = func(*inputs, *args, **kwargs)  # (or the data[:0] fallback, as now)
#     return reduce([value]) if reduce is not None else join([value])
# (join([df]) / join([array]) / join([list]) give back the same object type.)
@pytest.mark.parametrize(
    ("data", "func"),
    [
        ([], len),
        (pd.DataFrame({"a": pd.Series([], dtype="int64")}), lambda d: {"n": len(d)}),
        (np.array([], dtype=float), lambda a: float(a.sum())),
    ],
    ids=["len_list", "dict_frame", "float_array"],
)
def test_empty_input_scalar_func_gives_list(
    cluster: celerynb.LocalCluster, data: Any, func: Callable[[Any], Any]
) -> None:
    out = run(cluster, func, data)
    assert isinstance(out, list), f"got {out!r}, want a list with one entry per chunk"
    assert out in ([], [func(data)])  # zero chunks, or one empty chunk


# -- reduce= -------------------------------------------------------------------


@parametrize_chunking
def test_reduce_sum(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    df = dtype_frame()

    def f(d: pd.DataFrame) -> int:
        return int(d["int"].sum()) + int(d["Int64"].sum())

    out = run(cluster, f, df, reduce=sum, **chunking)
    assert type(out) is int
    assert out == f(df)


@pytest.mark.parametrize("chunking", [{"chunks": 1}, {"chunks": 7}, {"chunk_size": 3}], ids=str)
def test_reduce_concat(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    df = dtype_frame().set_axis(with_index("multi"), axis=0)
    assert_same(run(cluster, rowwise_frame, df, reduce=pd.concat, **chunking), rowwise_frame(df))


@pytest.mark.parametrize("chunks", [1, 7, 1000])
def test_reduce_numpy_and_chunk_count(cluster: celerynb.LocalCluster, chunks: int) -> None:
    a = ARRAYS["float_2d"]
    out = run(cluster, rowwise_array, a, chunks=chunks, reduce=np.concatenate)
    assert_same(out, rowwise_array(a))
    assert run(cluster, len, a, chunks=chunks, reduce=len) == min(chunks, N)


def test_reduce_sees_chunk_results_in_order(cluster: celerynb.LocalCluster) -> None:
    def first(xs: list[int]) -> int:
        return xs[0]

    out = run(cluster, first, list(range(N)), chunks=7, reduce=list)
    assert out == [i * N // 7 for i in range(7)]


# Was (celerynb/api.py, _empty_result(): `return reduce([])`): with empty data the reducer
# is called on zero chunk results, so reduce=pd.concat raises "No objects to concatenate"
# instead of returning the serial value reduce([func(data)]). Fix: see the bug above
# (`return reduce([value]) if reduce is not None else join([value])`).
def test_reduce_on_empty_input(cluster: celerynb.LocalCluster) -> None:
    df = dtype_frame().iloc[:0]
    out = run(cluster, rowwise_frame, df, reduce=pd.concat)
    assert_same(out, rowwise_frame(df))


# -- properties ----------------------------------------------------------------


PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

chunkings = st.one_of(
    st.builds(dict, chunks=st.integers(1, 60)),
    st.builds(dict, chunk_size=st.integers(1, 60)),
    st.just({}),
)

index_strategies = st.one_of(
    hpd.range_indexes(max_size=40),
    hpd.indexes(elements=st.integers(-5, 5), max_size=40),  # non-unique
    hpd.indexes(elements=st.text("abc", max_size=3), max_size=40),
    hpd.indexes(
        elements=st.datetimes(
            min_value=pd.Timestamp("2000-01-01").to_pydatetime(),
            max_value=pd.Timestamp("2030-01-01").to_pydatetime(),
        ),
        dtype="datetime64[ns]",
        max_size=40,
    ),
)

frames = hpd.data_frames(
    columns=[
        hpd.column("i", dtype=np.int64, elements=st.integers(-(2**40), 2**40)),
        hpd.column("f", dtype=np.float64),
        hpd.column("b", dtype=bool),
        hpd.column("s", elements=st.text(max_size=4), dtype=object),
    ],
    index=index_strategies,
)


def rowwise_random_frame(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(i3=d["i"] * 3 - 1, f2=d["f"] * 2, nb=~d["b"], s2=d["s"] + "!")


@PROPERTY_SETTINGS
@given(df=frames, chunking=chunkings)
def test_property_dataframes(
    cluster: celerynb.LocalCluster, df: pd.DataFrame, chunking: dict[str, int]
) -> None:
    expected = rowwise_random_frame(df)
    out = run(cluster, rowwise_random_frame, df, **chunking)
    assert_same(out, expected)


arrays = hnp.arrays(
    dtype=st.sampled_from([np.int32, np.float64, np.bool_, np.dtype("<U3"), np.complex64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
)


@PROPERTY_SETTINGS
@given(a=arrays, chunking=chunkings)
def test_property_arrays(
    cluster: celerynb.LocalCluster, a: np.ndarray, chunking: dict[str, int]
) -> None:
    def f(x: np.ndarray) -> np.ndarray:
        return np.flip(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x[:, None]

    out = run(cluster, f, a, **chunking)
    assert_same(out, f(a))
    if len(a):
        counts = run(cluster, len, a, **chunking)
        assert len(counts) == expected_n_chunks(len(a), cluster.n_workers, chunking)
        assert sum(counts) == len(a)
