"""Split data into chunks and join the chunks' results (no Celery in here).

Supported inputs: pandas ``DataFrame`` / ``Series`` / ``Index`` (split by
rows), NumPy ``ndarray`` (split on axis 0) and any sized sequence that slices
(list, tuple, range, ...).

Default chunking: ``4 x workers`` chunks, more if a chunk would exceed
``MAX_CHUNK_BYTES`` (64 MiB), never more chunks than items.

Join rule: if every chunk returned a DataFrame, every one a Series, every one
an Index, or every one an ndarray, they are concatenated in chunk order (pandas keeps index,
column order and dtypes; NumPy keeps dtype and trailing shape). If every
chunk returned a list, the lists are concatenated. Anything else comes back
as a list with one entry per chunk.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from .errors import ChunkInfo

MAX_CHUNK_BYTES = 64 * 2**20
CHUNKS_PER_WORKER = 4
SUPPORTED = (
    "pandas DataFrame, Series or Index, NumPy ndarray (at least 1-D), "
    "or a sized sequence such as a list, tuple or range"
)


def _pandas() -> Any:
    return sys.modules.get("pandas")


def _numpy() -> Any:
    return sys.modules.get("numpy")


def kind_of(data: Any) -> str:
    """'pandas', 'numpy' or 'sequence'; TypeError naming the fix otherwise."""
    pd, np = _pandas(), _numpy()
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series | pd.Index):
        return "pandas"
    if np is not None and isinstance(data, np.ndarray):
        if data.ndim == 0:
            raise TypeError(
                "cmap got a 0-d array: nothing to split; pass an array of 1-D or more. "
                f"Supported data: {SUPPORTED}"
            )
        return "numpy"
    if pd is not None and hasattr(pd.core, "groupby") and "GroupBy" in type(data).__name__:
        raise TypeError(
            f"cmap does not split {type(data).__name__} objects: pass the DataFrame "
            "itself and group inside func"
        )
    if isinstance(data, str | bytes | bytearray | memoryview):
        raise TypeError(
            f"cmap got {type(data).__name__}: strings are not split into characters; "
            f"pass a list (e.g. text.splitlines()) instead. Supported data: {SUPPORTED}"
        )
    if isinstance(data, Sequence):
        return "sequence"
    name = type(data).__name__
    if hasattr(data, "__next__") or hasattr(data, "gi_frame"):
        hint = f"cmap needs sized data, got a {name}; pass list(...) of it"
    elif isinstance(data, dict):
        hint = "cmap got a dict; pass list(d.items()) or list(d.values())"
    elif isinstance(data, set | frozenset):
        hint = f"cmap got a {name}, which has no order; pass sorted(...) or list(...) of it"
    elif isinstance(data, os.PathLike):
        hint = f"cmap got one path ({data}); pass a list of paths, e.g. sorted(folder.glob('*'))"
    else:
        hint = f"cmap cannot split {name}"
    raise TypeError(f"{hint}. Supported data: {SUPPORTED}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def nbytes(data: Any) -> int:
    """Approximate in-memory size of ``data`` (0 when unknown)."""
    pd = _pandas()
    if pd is not None and isinstance(data, pd.DataFrame):
        return int(data.memory_usage(index=False, deep=False).sum())
    size = getattr(data, "nbytes", 0)
    return int(size) if isinstance(size, int) else 0


def n_chunks_for(
    n_items: int,
    n_workers: int,
    size: int = 0,
    chunks: int | None = None,
    chunk_size: int | None = None,
) -> int:
    """How many chunks to cut ``n_items`` into (see the module docstring)."""
    if chunks is not None and chunk_size is not None:
        raise ValueError("pass chunks= or chunk_size=, not both")
    if chunks is not None:
        wanted = _positive_int("chunks", chunks)
    elif chunk_size is not None:
        wanted = math.ceil(n_items / _positive_int("chunk_size", chunk_size))
    else:
        wanted = max(CHUNKS_PER_WORKER * max(n_workers, 1), math.ceil(size / MAX_CHUNK_BYTES))
    return max(1, min(wanted, n_items))


def check_inputs(inputs: tuple[Any, ...]) -> int:
    """Validate the inputs of a call; return their common length."""
    for data in inputs:
        kind_of(data)
    lengths = [len(data) for data in inputs]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"cmap got inputs of different lengths {lengths}: several inputs are split "
            "together chunk by chunk, like zip(); pass inputs of equal length"
        )
    return lengths[0]


def _slice(data: Any, start: int, stop: int) -> Any:
    pd = _pandas()
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series):
        return data.iloc[start:stop]
    return data[start:stop]


@dataclass(frozen=True)
class Plan:
    """How the inputs are cut: chunk ``i`` covers positions ``bounds[i]`` of each."""

    inputs: tuple[Any, ...]
    bounds: tuple[tuple[int, int], ...]

    @classmethod
    def make(cls, inputs: tuple[Any, ...], n_chunks: int) -> Plan:
        n = check_inputs(inputs)
        bounds = tuple((i * n // n_chunks, (i + 1) * n // n_chunks) for i in range(n_chunks))
        return cls(inputs, bounds)

    @property
    def data(self) -> Any:
        """The first input (its index labels name the chunks)."""
        return self.inputs[0]

    def __len__(self) -> int:
        return len(self.bounds)

    def take(self, index: int) -> Any:
        """Chunk ``index``: a slice of the input, or a tuple of slices of each input."""
        start, stop = self.bounds[index]
        parts = tuple(_slice(data, start, stop) for data in self.inputs)
        return parts if len(parts) > 1 else parts[0]

    def info(self, index: int) -> ChunkInfo:
        start, stop = self.bounds[index]
        if kind_of(self.data) == "pandas" and stop > start:
            labels = self.data if isinstance(self.data, _pandas().Index) else self.data.index
            return ChunkInfo(index, len(self), start, stop, labels[start], labels[stop - 1], True)
        return ChunkInfo(index, len(self), start, stop)

    def items(self, index: int) -> int:
        start, stop = self.bounds[index]
        return stop - start


def _category(value: Any) -> str:
    pd, np = _pandas(), _numpy()
    if pd is not None and isinstance(value, pd.DataFrame):
        return "DataFrame"
    if pd is not None and isinstance(value, pd.Series):
        return "Series"
    if pd is not None and isinstance(value, pd.Index):
        return "Index"
    if np is not None and isinstance(value, np.ndarray) and value.ndim > 0:
        return "ndarray"
    if isinstance(value, list):
        return "list"
    return "other"


def join(parts: list[Any]) -> Any:
    """Join the chunks' results in order (see the module docstring for the rule)."""
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
        out = _pandas().concat(parts)
        # pandas re-infers object indexes on concat (pandas-dev/pandas#60159): undo that
        first = parts[0].index
        if out.index.dtype != first.dtype and all(p.index.dtype == first.dtype for p in parts):
            out.index = out.index.astype(first.dtype)
        return out
    if kind == "Index":
        return parts[0].append(parts[1:])
    if kind == "ndarray":
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"chunk results have different trailing shapes {sorted(shapes)}: "
                "func must return arrays that agree on every axis but the first"
            )
        np = _numpy()
        if any(isinstance(p, np.ma.MaskedArray) for p in parts):
            return np.ma.concatenate(parts, axis=0)
        return np.concatenate(parts, axis=0)
    if kind == "list":
        return list(chain.from_iterable(parts))
    return list(parts)
