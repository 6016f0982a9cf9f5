"""Property-based parity with the serial result, compared strictly (``strict.assert_exact``).

Strategies draw frames with awkward dtypes and indexes (every kind pandas has,
duplicates, names, freq, attrs), Series, Index, NumPy arrays (byte orders,
structured, masked, record arrays), sequences, and groupbys with every key
form pandas accepts and every option, each with a function that is row-wise
(or, for a groupby, any function ``apply`` takes). The claim checked:
``cmap(f, data, chunks=k)`` equals ``f(data)`` (``apply(f)`` for a groupby)
for any ``k``, or both raise.

Most examples run chunk-wise in this process (``strict.chunkwise``: the real
plan, ``GroupApply`` and join, chunks and results through the payload codec);
the last tests send examples through real ``cmap`` calls on the session's
embedded cluster.
"""

from __future__ import annotations

import array
import os
import sys
import warnings
from collections import UserList
from collections.abc import Callable
from datetime import datetime
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, event, given, reject, settings
from hypothesis import strategies as st
from strict import assert_exact, chunkwise

import celerynb
from celerynb import cmap

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# CELERYNB_PROPERTY_SCALE=20 searches twenty times as many examples (a local hunt for bugs)
SCALE = float(os.environ.get("CELERYNB_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


LOCAL = settings(
    max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ON_CLUSTER = settings(
    max_examples=examples(15),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each try is a call
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- columns of every kind -----------------------------------------------------------------

WORDS = st.sampled_from(["a", "b", "", "zz", "é", "a b"])
STAMPS = st.datetimes(datetime(1990, 1, 1), datetime(2040, 1, 1))


def _values(kind: str, n: int) -> st.SearchStrategy[Any]:
    """``n`` values of a column of ``kind`` (an array or a list for the Series constructor)."""
    lists = lambda elements: st.lists(elements, min_size=n, max_size=n)  # noqa: E731
    maybe = lambda elements: st.one_of(st.none(), elements)  # noqa: E731
    makers: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "int64": lambda: lists(st.integers(-(2**40), 2**40)).map(lambda v: np.array(v, "i8")),
        "int32": lambda: lists(st.integers(-(2**20), 2**20)).map(lambda v: np.array(v, "i4")),
        "uint8": lambda: lists(st.integers(0, 255)).map(lambda v: np.array(v, "u1")),
        "float64": lambda: lists(st.floats()).map(lambda v: np.array(v, "f8")),
        "float32": lambda: lists(st.floats(width=32)).map(lambda v: np.array(v, "f4")),
        "bool": lambda: lists(st.booleans()).map(lambda v: np.array(v, bool)),
        "object": lambda: lists(st.one_of(WORDS, st.integers(-3, 3), st.none())).map(
            lambda v: pd.array(v, dtype=object)
        ),
        "str": lambda: lists(maybe(WORDS)).map(lambda v: pd.array(v, dtype="str")),
        "string": lambda: lists(maybe(WORDS)).map(lambda v: pd.array(v, dtype="string")),
        "Int64": lambda: lists(maybe(st.integers(-9, 9))).map(lambda v: pd.array(v, "Int64")),
        "Float64": lambda: lists(maybe(st.floats(-1e9, 1e9))).map(lambda v: pd.array(v, "Float64")),
        "boolean": lambda: lists(maybe(st.booleans())).map(lambda v: pd.array(v, "boolean")),
        "category": lambda: lists(maybe(st.sampled_from("abc"))).map(
            lambda v: pd.Categorical(v, categories=["c", "b", "a", "unused"])
        ),
        "datetime": lambda: lists(STAMPS).map(lambda v: np.array(v, "datetime64[ns]")),
        "datetime_tz": lambda: lists(STAMPS).map(
            lambda v: pd.DatetimeIndex(v).tz_localize("UTC").tz_convert("Europe/Berlin").array
        ),
        "timedelta": lambda: lists(st.integers(-(10**12), 10**12)).map(
            lambda v: np.array(v, "timedelta64[ns]")
        ),
        "period": lambda: lists(st.integers(0, 600)).map(
            lambda v: pd.PeriodIndex.from_ordinals(v, freq="M").array
        ),
        "interval": lambda: lists(st.integers(-50, 50)).map(
            lambda v: pd.arrays.IntervalArray.from_arrays(v, [x + 1 for x in v])
        ),
        "sparse": lambda: lists(st.integers(0, 2)).map(
            lambda v: pd.arrays.SparseArray(v, fill_value=0)
        ),
    }
    return makers[kind]()


COLUMN_KINDS = [
    "int64", "int32", "uint8", "float64", "float32", "bool", "object", "str", "string", "Int64",
    "Float64", "boolean", "category", "datetime", "datetime_tz", "timedelta", "period",
    "interval", "sparse",
]  # fmt: skip


@st.composite
def indexes(draw: st.DrawFn, n: int, unique: bool = False) -> pd.Index:
    """An index of ``n`` labels of any kind (duplicates unless ``unique``), maybe named."""
    kinds = ["range", "int", "uint", "float", "object_str", "object_mixed", "str", "string"]
    kinds += ["datetime_freq", "datetime_tz_freq", "datetime", "timedelta_freq", "period"]
    kinds += ["categorical", "interval", "multi", "bool"]
    kind = draw(st.sampled_from(kinds))
    name = draw(st.sampled_from([None, "ix"]))
    labels = lambda elements: draw(  # noqa: E731
        st.lists(elements, min_size=n, max_size=n, unique=unique)
    )
    if kind == "range":
        start, step = draw(st.integers(-5, 5)), draw(st.sampled_from([1, 2, -3]))
        return pd.RangeIndex(start, start + n * step, step, name=name)
    if kind == "int":
        return pd.Index(
            labels(st.integers(-3, 3) if not unique else st.integers(-99, 99)), "i8", name=name
        )
    if kind == "uint":
        return pd.Index(labels(st.integers(0, 2**64 - 1)), "u8", name=name)
    if kind == "float":
        return pd.Index(labels(st.floats(allow_nan=not unique)), "f8", name=name)
    if kind == "object_str":
        return pd.Index(labels(st.text("xyz", max_size=3)), dtype=object, name=name)
    if kind == "object_mixed":
        mixed = st.one_of(st.integers(-2, 2) if not unique else st.integers(-99, 99), WORDS)
        return pd.Index(labels(mixed), dtype=object, name=name)
    if kind == "str":
        return pd.Index(labels(st.text("xyz", max_size=3)), dtype="str", name=name)
    if kind == "string":
        return pd.Index(labels(st.text("xyz", max_size=3)), dtype="string", name=name)
    if kind in ("datetime_freq", "datetime_tz_freq"):
        tz = "US/Eastern" if kind == "datetime_tz_freq" else None
        freq = draw(st.sampled_from(["h", "D", "47min"]))
        return pd.date_range("2024-03-09 20:00", periods=n, freq=freq, tz=tz, name=name)
    if kind == "datetime":
        return pd.DatetimeIndex(labels(STAMPS), name=name)
    if kind == "timedelta_freq":
        return pd.timedelta_range("1D", periods=n, freq="6h", name=name)
    if kind == "period":
        return pd.period_range("2020-01", periods=n, freq="M", name=name)
    if kind == "categorical":
        if unique:
            values = [f"c{i}" for i in range(n)]
            return pd.CategoricalIndex(values, categories=["z", *values[::-1]], name=name)
        values = labels(st.sampled_from("pqrs"))
        return pd.CategoricalIndex(values, categories=list("srqpzy"), name=name)
    if kind == "interval":
        return pd.IntervalIndex.from_breaks(range(n + 1), name=name)
    if kind == "bool" and not unique:
        return pd.Index(labels(st.booleans()), dtype=bool, name=name)
    outer = labels(st.sampled_from(["u", "v"])) if not unique else [f"u{i}" for i in range(n)]
    return pd.MultiIndex.from_arrays(
        [pd.Index(outer, dtype=object), list(range(n))], names=[name, "pos"]
    )


ATTRS = st.sampled_from([{}, {"source": "s3"}, {"weights": np.arange(3.0)}, {"nan": np.nan}])


@st.composite
def frames(draw: st.DrawFn, min_rows: int = 1, unique: bool = False) -> pd.DataFrame:
    """A frame of awkward columns plus ``n`` (int64) and ``keep`` (bool) that the row-wise
    functions use; maybe object-dtype column labels, maybe attrs."""
    n = draw(st.integers(min_rows, 14))
    kinds = draw(st.lists(st.sampled_from(COLUMN_KINDS), max_size=4, unique=True))
    data = {"n": np.arange(n, dtype=np.int64), "keep": draw(_values("bool", n))}
    for kind in kinds:
        data[f"c_{kind}"] = draw(_values(kind, n))
    df = pd.DataFrame(data, index=draw(indexes(n, unique)))
    if draw(st.booleans()):
        df.columns = df.columns.astype(object)
    df.attrs = draw(ATTRS)
    return df


def chunkings(n: int) -> st.SearchStrategy[int]:
    return st.integers(1, n + 2)


# -- row-wise functions ------------------------------------------------------------------------

FRAME_FUNCS: dict[str, Callable[[pd.DataFrame], Any]] = {
    "copy": lambda d: d.copy(),
    "assign": lambda d: d.assign(n2=d["n"] * 2, flag=~d["keep"]),
    "filter": lambda d: d[d["keep"]],
    "reset_index": lambda d: d.reset_index(drop=True),
    "index": lambda d: d.index,
    "column": lambda d: d["n"] + 1,
    "last_column_array": lambda d: d.iloc[:, -1].array,
    "to_numpy": lambda d: d[["n"]].to_numpy(),
    "to_records": lambda d: d[["n", "keep"]].to_records(index=False),
    "tuple": lambda d: tuple(d["n"]),
    "list": lambda d: list(d["keep"]),
    "astype_object": lambda d: d.astype(object),
}

SERIES_FUNCS: dict[str, Callable[[pd.Series], Any]] = {
    "copy": lambda s: s.copy(),
    "notna": lambda s: s[s.notna()],
    "reset_index": lambda s: s.reset_index(drop=True),
    "index": lambda s: s.index,
    "array": lambda s: s.array,
    "to_frame": lambda s: s.to_frame(),
    "astype_object": lambda s: s.astype(object),
}

INDEX_FUNCS: dict[str, Callable[[pd.Index], Any]] = {
    "identity": lambda i: i,
    "to_series": lambda i: i.to_series(),
    "array": lambda i: i.array,
    "list": lambda i: list(i),
}


def assert_same_outcome(serial: Callable[[], Any], chunked: Callable[[], Any]) -> None:
    """``chunked()`` is ``serial()``'s exact equal, or both raise the same kind of error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = serial()
        except Exception as exc:
            event(f"serial raised {type(exc).__name__}")
            with pytest.raises(type(exc)):
                chunked()
            return
        event(f"serial gave {type(expected).__name__}")
        out = chunked()
    assert_exact(out, expected)


def serial_and_chunkwise(func: Callable[..., Any], data: Any, chunks: int) -> None:
    assert_same_outcome(lambda: func(data), lambda: chunkwise(func, data, chunks=chunks))


@LOCAL
@given(df=frames(), func=st.sampled_from(list(FRAME_FUNCS)), data=st.data())
def test_frames(df: pd.DataFrame, func: str, data: st.DataObject) -> None:
    serial_and_chunkwise(FRAME_FUNCS[func], df, data.draw(chunkings(len(df))))


@LOCAL
@given(df=frames(), func=st.sampled_from(list(SERIES_FUNCS)), data=st.data())
def test_series(df: pd.DataFrame, func: str, data: st.DataObject) -> None:
    s = df.iloc[:, -1].rename(data.draw(st.sampled_from([None, "s", 3])))
    s.attrs = df.attrs
    serial_and_chunkwise(SERIES_FUNCS[func], s, data.draw(chunkings(len(s))))


@settings(LOCAL, max_examples=examples(40))
@given(df=frames(), func=st.sampled_from(list(INDEX_FUNCS)), data=st.data())
def test_indexes(df: pd.DataFrame, func: str, data: st.DataObject) -> None:
    serial_and_chunkwise(INDEX_FUNCS[func], df.index, data.draw(chunkings(len(df))))


# -- NumPy and sequences -------------------------------------------------------------------

ARRAY_DTYPES = [
    np.dtype("<i4"), np.dtype(">i4"), np.dtype(">f8"), np.dtype("f4"), np.dtype(bool),
    np.dtype("<U3"), np.dtype(">U3"), np.dtype("S3"), np.dtype("c8"), np.dtype(">c16"),
    np.dtype("datetime64[s]"), np.dtype(">M8[s]"),
    np.dtype([("a", "<i4"), ("b", ">f8")]), np.dtype(object),
]  # fmt: skip
if hasattr(np.dtypes, "StringDType"):  # NumPy 2
    ARRAY_DTYPES.append(np.dtypes.StringDType())


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Any dtype and byte order, 1-3 dimensions; plain, masked (maybe a fill value, maybe
    a hard mask), a matrix or a record array."""
    dtype = draw(st.sampled_from(ARRAY_DTYPES))
    shape = (draw(st.integers(1, 12)), *draw(st.lists(st.integers(0, 3), max_size=2)))
    raw = np.arange(int(np.prod(shape)) * 8, dtype=np.uint8)[: int(np.prod(shape))]
    if dtype.names:
        a = np.zeros(shape, dtype)
        a["a"], a["b"] = raw.reshape(shape), raw.reshape(shape) / 3
    elif dtype.kind == "O":
        a = np.empty(shape, dtype)
        a.ravel()[:] = [("t", int(x)) if x % 2 else str(x) for x in raw]
    else:
        a = raw.reshape(shape).astype(dtype)
    wrapper = draw(st.sampled_from(["plain", "masked", "record", "matrix"]))
    if wrapper == "masked" and dtype.kind not in "OT":
        mask = draw(st.lists(st.booleans(), min_size=a.size, max_size=a.size))
        a = np.ma.masked_array(a, mask=np.reshape(mask, shape), hard_mask=draw(st.booleans()))
        if dtype.kind in "if" and draw(st.booleans()):
            a.fill_value = -7
    elif wrapper == "record" and dtype.names:
        a = a.view(np.recarray)
    elif wrapper == "matrix" and a.ndim == 2 and dtype.kind in "biufc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            a = np.asmatrix(a)
    return a


ARRAY_FUNCS: dict[str, Callable[[np.ndarray], Any]] = {
    "identity": lambda a: a,
    "copy": lambda a: a.copy(),
    "new_axis": lambda a: a[:, None] if not isinstance(a, np.matrix) else a,  # (not 3-D)
    "tuple": lambda a: tuple(a.tolist()),
    "columns_reversed": lambda a: a.reshape(len(a), -1)[:, ::-1] if a.size else a,
    "every_other_column": lambda a: a.reshape(len(a), -1)[:, ::2] if a.size else a,
}


@LOCAL
@given(a=arrays(), func=st.sampled_from(list(ARRAY_FUNCS)), data=st.data())
def test_arrays(a: np.ndarray, func: str, data: st.DataObject) -> None:
    serial_and_chunkwise(ARRAY_FUNCS[func], a, data.draw(chunkings(len(a))))


# -- pandas arrays as the data -------------------------------------------------------------

ARRAY_KINDS = [
    "str", "string", "Int64", "Float64", "boolean", "category", "datetime_tz", "period",
    "interval", "sparse", "datetime", "timedelta",
]  # fmt: skip


@st.composite
def pandas_arrays(draw: st.DrawFn) -> Any:
    """A pandas array of any kind (``pd.array`` of it: DatetimeArray for datetime64,
    Categorical, ArrowStringArray, IntegerArray, ...)."""
    kind = draw(st.sampled_from(ARRAY_KINDS))
    values = draw(_values(kind, draw(st.integers(1, 14))))
    return values if isinstance(values, pd.api.extensions.ExtensionArray) else pd.array(values)


PANDAS_ARRAY_FUNCS: dict[str, Callable[[Any], Any]] = {
    "identity": lambda a: a,
    "copy": lambda a: a.copy(),
    "missing_dropped": lambda a: a[~pd.isna(a)],
    "times_two": lambda a: a * 2,
    "isna": lambda a: a.isna(),
    "list": lambda a: list(a),
}


@LOCAL
@given(a=pandas_arrays(), func=st.sampled_from(list(PANDAS_ARRAY_FUNCS)), data=st.data())
def test_pandas_arrays(a: Any, func: str, data: st.DataObject) -> None:
    event(type(a).__name__)
    serial_and_chunkwise(PANDAS_ARRAY_FUNCS[func], a, data.draw(chunkings(len(a))))


SEQUENCES = st.one_of(
    st.lists(st.one_of(st.integers(), WORDS), min_size=1, max_size=15),
    st.lists(st.integers(), min_size=1, max_size=15).map(tuple),
    st.builds(
        lambda start, n, step: range(start, start + n * step, step),
        st.integers(-9, 9),
        st.integers(1, 15),
        st.sampled_from([1, 3, -2]),
    ),
)
SEQUENCES = st.one_of(
    SEQUENCES,
    st.lists(st.one_of(st.integers(), WORDS), min_size=1, max_size=15).map(UserList),
    st.builds(
        array.array,
        st.sampled_from("dq"),
        st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=15),
    ),
)


def _like(xs: Any, items: list[Any]) -> Any:
    """``items`` in a sequence of ``xs``'s type (a list for a range)."""
    if isinstance(xs, range):
        return items
    if isinstance(xs, array.array):
        return array.array(xs.typecode, items)
    return type(xs)(items)


SEQUENCE_FUNCS: dict[str, Callable[[Any], Any]] = {
    "identity": lambda xs: xs,
    "list": lambda xs: [str(x) for x in xs],
    "tuple": lambda xs: tuple(xs),
    "some_kept": lambda xs: _like(xs, [x for x in xs if len(repr(x)) % 2]),
    "as_doubles": lambda xs: array.array("d", [float(len(repr(x)) % 7) for x in xs]),
}


@LOCAL
@given(xs=SEQUENCES, func=st.sampled_from(list(SEQUENCE_FUNCS)), data=st.data())
def test_sequences(xs: Any, func: str, data: st.DataObject) -> None:
    serial_and_chunkwise(SEQUENCE_FUNCS[func], xs, data.draw(chunkings(len(xs))))


# -- groupby -------------------------------------------------------------------------------

KEY_KINDS = ["int", "object", "str", "float_nan", "category", "bool", "datetime"]


def _keys(kind: str, n: int) -> st.SearchStrategy[Any]:
    lists = lambda elements: st.lists(elements, min_size=n, max_size=n)  # noqa: E731
    if kind == "int":
        return lists(st.integers(0, 3)).map(lambda v: np.array(v, "i8"))
    if kind == "object":
        return lists(st.one_of(st.sampled_from(["x", "y"]), st.none())).map(
            lambda v: pd.array(v, dtype=object)
        )
    if kind == "str":
        return lists(st.sampled_from(["x", "y", "z"])).map(lambda v: pd.array(v, dtype="str"))
    if kind == "float_nan":
        return lists(st.sampled_from([0.5, 1.0, np.nan])).map(lambda v: np.array(v, "f8"))
    if kind == "category":
        return lists(st.sampled_from(["p", "q", None])).map(
            lambda v: pd.Categorical(v, categories=["q", "unused", "p"])
        )
    if kind == "bool":
        return lists(st.booleans()).map(lambda v: np.array(v, bool))
    return lists(st.integers(0, 3)).map(
        lambda v: np.array("2024-01-01", "datetime64[ns]") + np.array(v, "timedelta64[D]")
    )


BY_FORMS = [
    "column", "columns", "array", "list", "index", "categorical", "series", "series_external",
    "series_shuffled", "series_partial", "function", "level", "levels", "grouper_freq", "mixed",
]  # fmt: skip


OUTSIDE_KEYS = ("array", "list", "index", "categorical", "function")


@st.composite
def groupbys(draw: st.DrawFn) -> tuple[Any, str]:
    """A DataFrame or Series groupby, with any key form and options; and its description."""
    n = draw(st.integers(1, 14))
    kind = draw(st.sampled_from(KEY_KINDS))
    form = draw(st.sampled_from(BY_FORMS))
    unique = form in ("series_shuffled", "series_partial", "function")
    df = pd.DataFrame(
        {
            "k": draw(_keys(kind, n)),
            "k2": draw(_keys("int", n)),
            "v": draw(_values("float64", n)),
            "w": draw(_values("int64", n)),
            "t": pd.date_range("2024-01-01", periods=n, freq="17h"),
        },
        index=draw(indexes(n, unique=unique)),
    )
    df.attrs = draw(st.sampled_from([{}, {"source": "s3"}]))
    keys = df["k"]
    by: Any = {
        "column": "k",
        "columns": ["k", "k2"],
        "array": keys.to_numpy(),
        "list": list(keys),
        "index": pd.Index(keys),
        "categorical": pd.Categorical(df["k2"], categories=[3, 2, 1, 0, 9]),
        "series": keys,
        "series_external": keys.rename("ext"),
        "series_shuffled": keys.rename("ext").iloc[::-1],
        "series_partial": keys.rename("ext").iloc[: max(1, n // 2)],
        "function": lambda label: hash(label) % 3,
        "level": None,
        "levels": None,
        "grouper_freq": pd.Grouper(key="t", freq="2D"),
        "mixed": ["k2", keys.to_numpy()],
    }[form]
    options: dict[str, Any] = {
        "sort": draw(st.booleans()),
        "group_keys": draw(st.booleans()),
        "dropna": draw(st.booleans()),
        "observed": draw(st.booleans()),
    }
    if form in ("level", "levels"):
        df = df.set_index(["k", "k2"])
        grouping: dict[str, Any] = {"level": 0 if form == "level" else ["k", "k2"]}
    else:
        grouping = {"by": by}
    selection = draw(st.sampled_from([None, None, "v", ["v", "w"]]))
    if selection is None:
        options["as_index"] = draw(st.booleans())
    elif selection == "v" and form in OUTSIDE_KEYS and draw(st.booleans()):
        try:  # a Series grouped by keys from outside
            return df["v"].groupby(by, **options), f"{form} {kind} {options} Series"
        except Exception:
            reject()
    try:
        grouped = df.groupby(**grouping, **options)
    except Exception:  # a key pandas refuses for this frame (e.g. an index it cannot map)
        reject()
    if selection is not None:
        grouped = grouped[selection]
    return grouped, f"{form} {kind} {options} selection={selection}"


def _first(g: Any) -> pd.Series:
    return g.iloc[:, 0] if isinstance(g, pd.DataFrame) else g


GROUP_FUNCS: dict[str, Callable[[Any], Any]] = {
    "size": lambda g: len(g),
    "sum": lambda g: _first(g).sum(),
    "none_for_some": lambda g: None if len(g) % 2 else len(g),
    "value_counts": lambda g: _first(g).value_counts(),
    "fixed_series": lambda g: pd.Series({"n": len(g), "first": _first(g).iloc[:1].sum()}),
    "head2": lambda g: g.head(2),
    "like_indexed": lambda g: g.copy(),
    "reversed": lambda g: g.iloc[::-1],
    "reset_index": lambda g: g.reset_index(drop=True),
    "ndarray": lambda g: _first(g).to_numpy(),
    "frame_or_none": lambda g: None if len(g) == 1 else g.head(1),
    "dict": lambda g: {"n": len(g)},
    "name": lambda g: g.name,
    "column_sums": lambda g: g.sum(numeric_only=True) if isinstance(g, pd.DataFrame) else g.sum(),
    "frame_or_scalar": lambda g: g.head(2) if len(g) > 2 else len(g),
    "describe": lambda g: _first(g).describe(),
    "to_frame": lambda g: g.to_frame() if isinstance(g, pd.Series) else g.iloc[:1, :1],
}


@settings(LOCAL, max_examples=examples(150))
@given(spec=groupbys(), func=st.sampled_from(list(GROUP_FUNCS)), chunks=st.integers(1, 6))
def test_groupby(spec: tuple[Any, str], func: str, chunks: int) -> None:
    grouped, description = spec
    event(description.split()[0])
    serial_and_chunkwise_groupby(GROUP_FUNCS[func], grouped, chunks)


def serial_and_chunkwise_groupby(func: Callable[..., Any], grouped: Any, chunks: int) -> None:
    assert_same_outcome(
        lambda: grouped.apply(func), lambda: chunkwise(func, grouped, chunks=chunks)
    )


# -- through real cmap calls -------------------------------------------------------------------


@ON_CLUSTER
@given(
    df=frames(min_rows=0),
    func=st.sampled_from(["copy", "assign", "filter", "reset_index", "index", "tuple"]),
    data=st.data(),
)
def test_frames_on_the_cluster(
    cluster: celerynb.LocalCluster, df: pd.DataFrame, func: str, data: st.DataObject
) -> None:
    f = FRAME_FUNCS[func]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f(df)
    chunks = data.draw(chunkings(len(df)))
    assert_exact(cmap(f, df, chunks=chunks, cluster=cluster, progress=False), expected)


@ON_CLUSTER
@given(
    spec=groupbys(),
    func=st.sampled_from(["sum", "value_counts", "head2", "reset_index", "none_for_some"]),
    chunks=st.integers(1, 6),
)
def test_groupby_on_the_cluster(
    cluster: celerynb.LocalCluster, spec: tuple[Any, str], func: str, chunks: int
) -> None:
    grouped, _ = spec
    f = GROUP_FUNCS[func]
    assert_same_outcome(
        lambda: grouped.apply(f),
        lambda: cmap(f, grouped, chunks=chunks, cluster=cluster, progress=False),
    )


@ON_CLUSTER
@given(a=arrays(), func=st.sampled_from(["identity", "columns_reversed"]), data=st.data())
def test_arrays_on_the_cluster(
    cluster: celerynb.LocalCluster, a: np.ndarray, func: str, data: st.DataObject
) -> None:
    f = ARRAY_FUNCS[func]
    chunks = data.draw(chunkings(len(a)))
    assert_exact(cmap(f, a, chunks=chunks, cluster=cluster, progress=False), f(a))


@ON_CLUSTER
@given(a=pandas_arrays(), func=st.sampled_from(["identity", "missing_dropped"]), data=st.data())
def test_pandas_arrays_on_the_cluster(
    cluster: celerynb.LocalCluster, a: Any, func: str, data: st.DataObject
) -> None:
    f = PANDAS_ARRAY_FUNCS[func]
    chunks = data.draw(chunkings(len(a)))
    assert_exact(cmap(f, a, chunks=chunks, cluster=cluster, progress=False), f(a))


@ON_CLUSTER
@given(xs=SEQUENCES, func=st.sampled_from(["identity", "some_kept"]), data=st.data())
def test_sequences_on_the_cluster(
    cluster: celerynb.LocalCluster, xs: Any, func: str, data: st.DataObject
) -> None:
    f = SEQUENCE_FUNCS[func]
    chunks = data.draw(chunkings(len(xs)))
    assert_exact(cmap(f, xs, chunks=chunks, cluster=cluster, progress=False), f(xs))
