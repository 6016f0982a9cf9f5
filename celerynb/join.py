"""The join rule: how the chunks' results become one result, in chunk order.

Every chunk's result must be of one of these kinds (else ``TypeError``):

- DataFrames, or Series: concatenated (``pd.concat``). The index keeps its
  dtype, and ``attrs`` that every part shares are kept. If every part is
  numbered afresh (a ``RangeIndex`` from 0, as after ``reset_index``), the
  result is numbered 0..n-1, as ``func(data)`` would number it.
- Index: appended, keeping the dtype (and the fresh numbering above).
- pandas extension arrays (``.array``, ``Categorical``, ...): one array of
  the same type (``_concat_same_type``; a common dtype if theirs differ).
- ndarrays (at least 1-D): concatenated on axis 0, keeping the dtype (byte
  order too) and the subclass (``recarray``, ``matrix``, ...) when every part
  has them; masked arrays keep their mask, fill value and hard mask.
- lists, tuples: concatenated into one list, one tuple.
- other mutable sequences (``UserList``, ``array.array``, ``deque``, ...) but
  ``bytearray``: one of their type if every part is of that type (and one
  ``array.array`` typecode), else a list with one entry per chunk.
- ranges: one range if each continues the previous one, else a list of
  their items.

Anything else (scalars, dicts, 0-d arrays, mixed kinds of "anything else")
comes back as a list with one entry per chunk.
"""

from __future__ import annotations

import copy
from collections.abc import MutableSequence, Sequence
from itertools import chain, pairwise
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from .errors import ReductionWarning, warn_at_caller
from .inputs import _numpy, _pandas

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from pandas.api.extensions import ExtensionArray

    Frame: TypeAlias = pd.DataFrame | pd.Series

Category = Literal[
    "DataFrame",
    "Series",
    "Index",
    "extension",
    "ndarray",
    "list",
    "tuple",
    "range",
    "sequence",
    "other",
]


def _category(value: object) -> Category:
    pd, np = _pandas(), _numpy()
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return "DataFrame"
        if isinstance(value, pd.Series):
            return "Series"
        if isinstance(value, pd.Index):
            return "Index"
        if isinstance(value, pd.api.extensions.ExtensionArray):
            return "extension"
    if np is not None and isinstance(value, np.ndarray) and value.ndim > 0:
        return "ndarray"
    if isinstance(value, list):
        return "list"
    if isinstance(value, tuple):
        return "tuple"
    if isinstance(value, range):
        return "range"
    if isinstance(value, MutableSequence) and not isinstance(value, bytearray):
        return "sequence"
    return "other"


def join(parts: Sequence[object], source: pd.Index | None = None) -> Any:
    """Join the chunks' results in order (see the module docstring for the rule).

    ``source``: the index of the data the chunks were cut from by position, if any
    (for the ``freq`` a serial run keeps, and the :class:`ReductionWarning`).
    """
    categories = [_category(p) for p in parts]
    kinds = set(categories)
    if len(kinds) > 1 and kinds != {"other"}:
        first = {c: i for i, c in reversed(list(enumerate(categories)))}
        seen = ", ".join(
            f"chunk {i} returned {type(parts[i]).__name__}" for i in sorted(first.values())
        )
        raise TypeError(
            f"func returned inconsistent types across chunks ({seen}): return the same "
            "type from every chunk so the results can be joined"
        )
    kind = categories[0] if categories else "other"
    if kind in ("DataFrame", "Series"):
        frames = cast("list[Frame]", parts)
        indexes = [p.index for p in frames]
        if source is not None:
            warn_if_reduced(indexes, source)
        out = _join_frames(frames)
        if source is not None:
            out.index = serial_freq(out.index, source, indexes)
        return out
    if kind == "Index":
        labels = cast("list[pd.Index]", parts)
        joined = _join_indexes(labels)
        return joined if source is None else serial_freq(joined, source, labels)
    if kind == "extension":
        return _join_extension_arrays(cast("list[ExtensionArray]", parts))
    if kind == "ndarray":
        return _join_arrays(cast("list[np.ndarray]", parts))
    if kind in ("list", "tuple"):
        items = list(chain.from_iterable(cast("list[list[object]]", parts)))
        return items if kind == "list" else tuple(items)
    if kind == "range":
        return _join_ranges(cast("list[range]", parts))
    if kind == "sequence":
        return _join_sequences(cast("list[MutableSequence[object]]", parts))
    return list(parts)


# -- pandas ------------------------------------------------------------------------------------


def _numbered_afresh(indexes: Sequence[pd.Index]) -> bool:
    """Every index is a RangeIndex from 0 by 1 and at least two are not empty: func numbered
    each chunk's rows afresh (a positional slice of the data's own index cannot do that)."""
    import pandas as pd

    fresh = all(isinstance(ix, pd.RangeIndex) and ix.start == 0 and ix.step == 1 for ix in indexes)
    return fresh and sum(len(ix) > 0 for ix in indexes) > 1


def _common(values: Sequence[object]) -> object:
    """The first value if every value is the same (None otherwise)."""
    first = values[0]
    return first if all(same_value(v, first) for v in values[1:]) else None


def _keep_dtype(out: pd.Index, indexes: Sequence[pd.Index]) -> pd.Index:
    """``out`` (the indexes appended) in their common dtype, which appending may re-infer
    (pandas-dev/pandas#60159: object labels come back as str or int64)."""
    dtype = indexes[0].dtype
    if out.dtype != dtype and all(ix.dtype == dtype for ix in indexes):
        return out.astype(dtype)
    return out


def _join_indexes(parts: list[pd.Index]) -> pd.Index:
    import pandas as pd

    if _numbered_afresh(parts):
        return pd.RangeIndex(sum(len(p) for p in parts), name=_common([p.name for p in parts]))
    return _keep_dtype(parts[0].append(parts[1:]), parts)


def _join_frames(parts: list[Frame]) -> Frame:
    import pandas as pd

    attrs = [p.attrs for p in parts]
    if any(attrs):  # pandas compares attrs with ==, which arrays in them break (#59196)
        parts = [p.copy(deep=False) for p in parts]
        for p in parts:
            p.attrs = {}
    indexes = [p.index for p in parts]
    out: Frame
    if _numbered_afresh(indexes):
        out = pd.concat(cast("list[pd.DataFrame]", parts), ignore_index=True)
        out.index = pd.RangeIndex(len(out), name=_common([ix.name for ix in indexes]))
    else:
        out = pd.concat(cast("list[pd.DataFrame]", parts))  # (or every part a Series)
        out.index = _keep_dtype(out.index, indexes)
    if all(attrs):
        common = _common(attrs)
        if isinstance(common, dict):
            out.attrs = common
    return out


def serial_freq(out: pd.Index, source: pd.Index, indexes: Sequence[pd.Index]) -> pd.Index:
    """``out`` (joined datetime-like labels) with the ``freq`` a serial run gives them.

    pandas keeps ``freq`` through a positional take of evenly spaced rows (a filter
    that keeps every other hour has a 2-hour freq), but joins pieces of different
    spacing without one. When every piece kept a ``freq`` and the joined labels are
    rows of ``source`` at evenly spaced positions, this sets the serial ``freq``.
    """
    import numpy as np
    import pandas as pd

    freq = getattr(source, "freq", None)
    if (
        freq is None
        or not isinstance(out, pd.DatetimeIndex | pd.TimedeltaIndex)
        or out.freq is not None
        or len(out) < 2
        or any(getattr(ix, "freq", None) is None for ix in indexes if len(ix))
    ):
        return out
    positions = source.get_indexer(out)
    steps = np.diff(positions)
    if (positions < 0).any() or steps[0] < 1 or (steps != steps[0]).any():
        return out
    return type(out)(out, freq=freq * int(steps[0]))


def warn_if_reduced(indexes: Sequence[pd.Index], source: pd.Index, limit: int = 1_000_000) -> None:
    """A :class:`ReductionWarning` when the parts' indexes repeat, across chunks, labels
    that ``source`` does not have: ``func`` reduced each chunk. Parts whose labels rise
    from one part to the next (row-wise results of sorted data) cannot repeat any and
    cost a monotonicity check; otherwise up to ``limit`` labels are looked at."""
    filled = [ix for ix in indexes if len(ix)]
    if len(filled) < 2 or _numbered_afresh(indexes) or _rising(filled):
        return  # (rows numbered afresh in each chunk are numbered again when joined)
    if sum(map(len, filled)) > limit:
        return
    labels = filled[0].unique().append([ix.unique() for ix in filled[1:]])
    twice = labels.duplicated()
    if not twice.any():
        return
    firsts = labels[labels.isin(labels[twice]) & ~twice]  # in the order they first appear
    new = firsts[~firsts.isin(source)]
    if not len(new):
        return
    shown = ", ".join(repr(x) for x in new[:3]) + (", ..." if len(new) > 3 else "")
    warn_at_caller(
        f"the chunks' results repeat labels the data does not have ({shown}) in "
        f"{len(filled)} chunks: func looks like a reduction of its chunk (such as "
        "chunk.apply(f) by column, or chunk.sum()), so the result holds one reduced "
        "part per chunk, not func(data). Reduce the parts too (reduce=), or let cmap "
        "do the row-wise part and reduce its joined result (e.g. df.apply(f) on it)",
        ReductionWarning,
    )


def _rising(indexes: Sequence[pd.Index]) -> bool:
    """Whether the labels rise through ``indexes`` (each sorted, each after the last)."""
    try:
        return all(ix.is_monotonic_increasing for ix in indexes) and all(
            bool(a[-1] < b[0]) for a, b in pairwise(indexes)
        )
    except TypeError:  # labels that do not compare
        return False


def _join_extension_arrays(parts: list[ExtensionArray]) -> ExtensionArray:
    dtype = parts[0].dtype
    if all(type(p) is type(parts[0]) and p.dtype == dtype for p in parts):
        same: Any = type(parts[0])  # (_concat_same_type: the pandas extension interface)
        return cast("ExtensionArray", same._concat_same_type(parts))
    import pandas as pd  # a common dtype, found as pandas finds it for Series

    joined = pd.concat([pd.Series(p, copy=False) for p in parts], ignore_index=True)
    return cast("ExtensionArray", joined.array)


# -- NumPy and sequences -----------------------------------------------------------------------


def _join_arrays(parts: list[np.ndarray]) -> np.ndarray:
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(
            f"chunk results have different trailing shapes {sorted(shapes)}: "
            "func must return arrays that agree on every axis but the first"
        )
    import numpy as np

    first = parts[0]
    same_dtype = all(p.dtype == first.dtype for p in parts)
    masked = [p for p in parts if isinstance(p, np.ma.MaskedArray)]
    if masked:
        joined = cast("np.ma.MaskedArray", np.ma.concatenate(parts, axis=0))
        if same_dtype and joined.dtype != first.dtype:
            joined = cast("np.ma.MaskedArray", joined.astype(first.dtype))
        if len(masked) == len(parts):
            fill = _common([p.fill_value for p in masked])  # (a NumPy scalar)
            if isinstance(fill, np.generic):
                joined.fill_value = fill
            if all(p.hardmask for p in masked):
                joined.harden_mask()
        return joined
    if same_dtype and all(type(p) is type(first) for p in parts):
        # into an array like the first part: its dtype as is (byte order too) and subclass
        out = np.empty_like(first, shape=(sum(len(p) for p in parts), *first.shape[1:]))
        return np.concatenate(parts, axis=0, out=out)
    return np.concatenate(parts, axis=0)


def _join_sequences(
    parts: list[MutableSequence[object]],
) -> MutableSequence[object] | list[MutableSequence[object]]:
    """One sequence of the parts' type (``UserList``, ``array.array``, ...), if they share
    it (and a typecode); else the parts, as a list."""
    first = parts[0]
    typecode = getattr(first, "typecode", None)
    if any(type(p) is not type(first) or getattr(p, "typecode", None) != typecode for p in parts):
        return list(parts)
    out = copy.copy(first)
    for part in parts[1:]:
        out.extend(part)
    return out


def _join_ranges(parts: list[range]) -> range | list[int]:
    filled = [r for r in parts if len(r)]
    if not filled:
        return parts[0]
    first, step = filled[0], filled[0].step
    if all(r.step == step or len(r) == 1 for r in filled) and all(
        b[0] == a[-1] + step for a, b in pairwise(filled)
    ):
        return range(first.start, filled[-1][-1] + step, step)
    return list(chain.from_iterable(parts))


# -- comparing values (attrs, fill values) -------------------------------------------------------


def same_value(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` hold the same value: arrays and frames compare whole, NaN
    equals NaN, and values that cannot be compared are not the same."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    pd, np = _pandas(), _numpy()
    try:
        if isinstance(a, dict) and isinstance(b, dict):
            return bool(a.keys() == b.keys()) and all(same_value(a[k], b[k]) for k in a)
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            return len(a) == len(b) and all(map(same_value, a, b))
        if pd is not None and isinstance(a, pd.DataFrame | pd.Series | pd.Index):
            return bool(a.equals(b))
        if np is not None and isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            nan = a.dtype.kind in "fcmM"
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=nan))
        return bool(a == b) or bool(a != a and b != b)  # NaN
    except Exception:
        return False
