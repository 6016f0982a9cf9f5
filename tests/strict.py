"""Strict comparison with the serial result, and chunk-wise runs without a cluster.

``assert_exact`` compares type, dtype (byte order too), index type, names,
freq, flags, attrs, masks, hard masks and fill values. ``chunkwise`` runs a
call the way the cluster does (the real plan, ``GroupApply`` and join; chunks and results
through the payload codec), but in this process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from celerynb.groupby import GroupApply
from celerynb.inputs import check_inputs, is_groupby
from celerynb.join import same_value
from celerynb.plane import codec
from celerynb.planning import make_plan

SECRET = codec.new_secret()


def assert_exact(out: Any, expected: Any, where: str = "result") -> None:
    """``out`` is ``expected``'s exact equal (see the module docstring)."""
    assert type(out) is type(expected), (
        f"{where}: {type(out).__name__} != {type(expected).__name__}"
    )
    out = _with_objects_of(out, expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(
            out,
            expected,
            check_exact=True,
            check_index_type=True,
            check_column_type=True,
            check_frame_type=True,
            check_freq=True,
            check_flags=True,
        )
        _assert_index_exact(out.index, expected.index)
        _assert_index_exact(out.columns, expected.columns)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(
            out,
            expected,
            check_exact=True,
            check_index_type=True,
            check_series_type=True,
            check_freq=True,
            check_flags=True,
        )
        _assert_index_exact(out.index, expected.index)
    elif isinstance(expected, pd.Index):
        _assert_index_exact(out, expected)
    elif isinstance(expected, pd.api.extensions.ExtensionArray):
        assert out.dtype == expected.dtype, f"{where}: {out.dtype} != {expected.dtype}"
        pd.testing.assert_extension_array_equal(out, expected, check_exact=True)
    elif isinstance(expected, np.ndarray):
        assert out.dtype == expected.dtype, f"{where}: {out.dtype!r} != {expected.dtype!r}"
        assert out.shape == expected.shape, f"{where}: {out.shape} != {expected.shape}"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected), strict=True)
        if isinstance(expected, np.ma.MaskedArray):
            np.testing.assert_array_equal(np.ma.getmaskarray(out), np.ma.getmaskarray(expected))
            assert out.hardmask == expected.hardmask, f"{where}: hard mask differs"
            # in the array's dtype: NumPy may keep a default fill value in a wider one
            fills = [np.asarray(x.fill_value, dtype=expected.dtype) for x in (out, expected)]
            assert same_value(*fills), (
                f"{where}: fill_value {out.fill_value!r} != {expected.fill_value!r}"
            )
    elif isinstance(expected, list | tuple):
        assert len(out) == len(expected), f"{where}: {len(out)} != {len(expected)} items"
        for i, (a, b) in enumerate(zip(out, expected, strict=True)):
            assert_exact(a, b, f"{where}[{i}]")
    else:
        assert same_value(out, expected), f"{where}: {out!r} != {expected!r}"
    if isinstance(expected, pd.DataFrame | pd.Series):
        assert same_value(out.attrs, expected.attrs), (
            f"{where}: attrs {out.attrs} != {expected.attrs}"
        )


def _with_objects_of(out: Any, expected: Any) -> Any:
    """``out`` with ``expected``'s objects in the object columns that hold the same values:
    pandas finds NaN inside a tuple equal only to the same NaN object, and every pickled
    NaN is a new one."""
    if isinstance(expected, pd.Series):
        same = len(out) == len(expected) and out.dtype == expected.dtype == object
        if same and all(map(same_value, out, expected)):
            values = expected.to_numpy()
            return pd.Series(values, out.index, object, out.name).__finalize__(out)
        return out
    if not isinstance(expected, pd.DataFrame) or out.shape != expected.shape:
        return out
    out = out.copy()
    for i in range(out.shape[1]):
        mine, theirs = out.iloc[:, i], expected.iloc[:, i]
        if mine.dtype == theirs.dtype == object and all(map(same_value, mine, theirs)):
            out.isetitem(i, pd.Series(theirs.to_numpy(), out.index, object))
    return out


def _assert_index_exact(out: pd.Index, expected: pd.Index) -> None:
    pd.testing.assert_index_equal(out, expected, exact=True, check_exact=True, check_names=True)
    assert out.dtype == expected.dtype, f"index dtype {out.dtype} != {expected.dtype}"
    assert getattr(out, "freq", None) == getattr(expected, "freq", None), "index freq differs"
    if isinstance(expected, pd.MultiIndex):
        for a, b in zip(out.levels, expected.levels, strict=True):
            assert a.dtype == b.dtype, f"level dtype {a.dtype} != {b.dtype}"


def _through_codec(value: Any) -> Any:
    return codec.loads(SECRET, codec.dumps(SECRET, value))


def chunkwise(func: Any, *inputs: Any, chunks: int) -> Any:
    """``cmap(func, *inputs, chunks=chunks)`` in this process: plan, chunks through the
    codec, ``func`` (per group for a groupby), results through the codec, join."""
    check_inputs(inputs)
    plan, _ = make_plan(inputs, 2, 0, chunks, None, fixed=True)
    shipped = GroupApply.of(inputs[0], func) if is_groupby(inputs[0]) else func
    parts = []
    for i in range(len(plan)):
        chunk = _through_codec(plan.take(i))
        args = chunk if len(inputs) > 1 else (chunk,)
        parts.append(_through_codec(shipped(*args)))
    return plan.join(parts)
