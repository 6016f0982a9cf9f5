"""What data ``cmap`` accepts, its kind, length and size (no Celery in here)."""

from __future__ import annotations

import os
import sys
from collections import UserString
from collections.abc import Iterable, Sequence, Sized
from types import ModuleType
from typing import Literal, cast

from .errors import AlignmentWarning, warn_at_caller

Kind = Literal["pandas", "numpy", "sequence", "groupby", "stream", "source"]

SUPPORTED = (
    "pandas DataFrame, Series, Index or array (pd.array, Categorical), NumPy ndarray "
    "(at least 1-D; masked, matrix), "
    "a sized sequence such as a list, tuple or range, "
    "an iterator of chunks (a generator, pd.read_csv(..., chunksize=N)), "
    "or files the workers read (celerynb.read_csv / read_json / read_parquet)"
)


def _pandas() -> ModuleType | None:
    return sys.modules.get("pandas")


def _numpy() -> ModuleType | None:
    return sys.modules.get("numpy")


def pandas() -> ModuleType:
    """pandas, imported when first needed (data that needs it has it loaded)."""
    import pandas

    return pandas


def numpy() -> ModuleType:
    """NumPy, imported when first needed."""
    import numpy

    return numpy


def is_groupby(data: object) -> bool:
    """Whether ``data`` is a pandas DataFrameGroupBy or SeriesGroupBy."""
    pd = _pandas()
    return pd is not None and isinstance(
        data, pd.api.typing.DataFrameGroupBy | pd.api.typing.SeriesGroupBy
    )


def is_source(data: object) -> bool:
    """Whether ``data`` is a source the workers read (``celerynb.read_csv`` and the like)."""
    base = sys.modules.get(f"{__package__}.sources.base")  # not loaded: no source made
    return base is not None and isinstance(data, base.Source)


def kind_of(data: object) -> Kind:
    """'pandas', 'numpy', 'sequence', 'groupby', 'stream' or 'source'; TypeError naming
    the fix otherwise."""
    pd, np = _pandas(), _numpy()
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series | pd.Index):
        return "pandas"
    if pd is not None and isinstance(data, pd.api.extensions.ExtensionArray):
        return "pandas"  # IntegerArray, Categorical, ArrowStringArray, ...: cut by position
    if np is not None and isinstance(data, np.ndarray):
        if data.ndim == 0:
            raise TypeError(
                "cmap got a 0-d array: nothing to split; pass an array of 1-D or more. "
                f"Supported data: {SUPPORTED}"
            )
        return "numpy"
    if is_groupby(data):
        return "groupby"
    if is_source(data):
        return "source"
    if isinstance(data, str | bytes | bytearray | memoryview):
        raise TypeError(
            f"cmap got {type(data).__name__}: strings are not split into characters; "
            f"pass a list (e.g. text.splitlines()) instead. Supported data: {SUPPORTED}"
        )
    name = type(data).__name__
    if isinstance(data, Sequence):
        if isinstance(data, UserString):
            raise TypeError(
                f"cmap got a {name}: strings are not split into characters; pass a list "
                f"(e.g. str(text).splitlines()) instead. Supported data: {SUPPORTED}"
            )
        try:
            data[0:0]
        except Exception:
            raise TypeError(
                f"cmap got a {name}, which cannot be sliced into chunks; pass list(...) of it. "
                f"Supported data: {SUPPORTED}"
            ) from None
        return "sequence"
    if isinstance(data, dict):
        hint = "cmap got a dict; pass list(d.items()) or list(d.values())"
    elif isinstance(data, set | frozenset):
        hint = f"cmap got a {name}, which has no order; pass sorted(...) or list(...) of it"
    elif isinstance(data, os.PathLike):
        hint = f"cmap got one path ({data}); pass a list of paths, e.g. sorted(folder.glob('*'))"
    elif isinstance(data, Iterable):
        return "stream"  # an iterator (or iterable) of chunks: each item is one chunk
    else:
        hint = f"cmap cannot split {name}"
    raise TypeError(f"{hint}. Supported data: {SUPPORTED}")


def nbytes(data: object) -> int:
    """Approximate in-memory size of ``data`` (0 when unknown; a groupby's: its frame's)."""
    pd = _pandas()
    if is_groupby(data):
        data = getattr(data, "obj", None)
    if pd is not None and isinstance(data, pd.DataFrame):
        blocks = getattr(getattr(data, "_mgr", None), "blocks", None)  # 20x faster than
        if blocks is not None:  # memory_usage() on a small frame
            return sum(int(getattr(b.values, "nbytes", 0)) for b in blocks)
        return int(data.memory_usage(index=False, deep=False).sum())
    size = getattr(data, "nbytes", 0)
    return int(size) if isinstance(size, int) else 0


def rows(data: object, start: int, stop: int | None = None) -> object:
    """Rows ``start:stop`` of ``data`` by position (``iloc`` for a frame or Series)."""
    pd = _pandas()
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series):
        return data.iloc[start:stop]
    return cast("Sequence[object]", data)[start:stop]


def blocks_of(data: object) -> int:
    """How many blocks pandas keeps ``data`` in (1 for anything but a DataFrame)."""
    pd = _pandas()
    if pd is not None and isinstance(data, pd.DataFrame):
        return max(1, int(getattr(getattr(data, "_mgr", None), "nblocks", data.shape[1])))
    return 1


def check_inputs(inputs: tuple[object, ...]) -> int:
    """Validate the inputs of a call; return their common length (groups for a groupby;
    -1 for iterators of chunks, whose length is not known)."""
    kinds = [kind_of(data) for data in inputs]
    if "groupby" in kinds and len(inputs) > 1:
        raise TypeError("a groupby cannot be combined with other inputs: pass it alone")
    if "source" in kinds and len(inputs) > 1:
        raise TypeError(
            "files the workers read (read_csv, read_json, read_parquet) are passed alone: "
            "join other data to the frame inside func"
        )
    if "stream" in kinds:
        if set(kinds) != {"stream"}:
            raise TypeError(
                "an iterator of chunks is zipped only with other iterators (their items are "
                "the chunks); pass iter(...) of chunks for the other inputs too"
            )
        return -1
    lengths = [len(cast(Sized, data)) for data in inputs]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"cmap got inputs of different lengths {lengths}: several inputs are split "
            "together chunk by chunk, like zip(); pass inputs of equal length"
        )
    return lengths[0]


def misaligned(inputs: tuple[object, ...]) -> str | None:
    """Why pairing ``inputs`` by position can differ from ``func`` on the whole inputs:
    two of them are DataFrames / Series with different indexes (None if not)."""
    pd = _pandas()
    if pd is None or len(inputs) < 2:
        return None
    framed = [(i, x) for i, x in enumerate(inputs) if isinstance(x, pd.DataFrame | pd.Series)]
    if len(framed) < 2:
        return None
    i, first = framed[0]
    for j, other in framed[1:]:
        a, b = first.index, other.index
        if a.equals(b):
            continue
        where = ""
        try:
            position = next(p for p, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            where = f" (position {position}: {a[position]!r} vs {b[position]!r})"
        except Exception:
            pass
        return (
            f"inputs {i} and {j} have different indexes{where}: cmap pairs their rows by "
            "position, chunk by chunk, while pandas aligns them by label inside func, so "
            "the result can differ from func on the whole inputs. Align them first "
            f"(input_{j} = input_{j}.reindex(input_{i}.index)), or to pair rows by position "
            f"on purpose, give them one index (input_{j}.set_axis(input_{i}.index)) "
            "or pass .to_numpy()"
        )
    return None


def warn_if_misaligned(inputs: tuple[object, ...]) -> None:
    """Warn (``AlignmentWarning``, at the caller's line) when :func:`misaligned` says so."""
    message = misaligned(inputs)
    if message is not None:
        warn_at_caller(message, AlignmentWarning)
