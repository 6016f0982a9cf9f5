"""Split data into chunks and join the chunks' results (no Celery in here).

Supported inputs: pandas ``DataFrame`` / ``Series`` / ``Index`` (split by
rows), NumPy ``ndarray`` (split on axis 0) and any sized sequence that slices
(list, tuple, range, ...).

Fixed chunking: ``4 x workers`` chunks, more if a chunk would exceed
``MAX_CHUNK_BYTES`` (64 MiB), never more chunks than items. It is the default
for small inputs (under 64 items per worker), groupby and ``reduce=`` calls.
Otherwise the default is adaptive (see ``MapFuture._plan_rest``): one small
probe chunk per worker runs first; from its measured time per item the rest
is cut on a guided schedule: each chunk takes ``1 / (4 x workers)`` of what is
left, so chunks shrink towards the end and a slow tail spreads over all
workers; no chunk is planned shorter than 0.05 s (per-chunk overhead) unless
that would leave a worker idle, and none exceeds 64 MiB. ``chunks=`` /
``chunk_size=`` override both rules.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, pairwise
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


def is_groupby(data: Any) -> bool:
    """Whether ``data`` is a pandas DataFrameGroupBy or SeriesGroupBy."""
    pd = _pandas()
    return pd is not None and isinstance(
        data, pd.api.typing.DataFrameGroupBy | pd.api.typing.SeriesGroupBy
    )


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
    if is_groupby(data):
        return "groupby"
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
    """Validate the inputs of a call; return their common length (groups for a groupby)."""
    kinds = [kind_of(data) for data in inputs]
    if "groupby" in kinds and len(inputs) > 1:
        raise TypeError("a groupby cannot be combined with other inputs: pass it alone")
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
        return cls(inputs, ()).extended(n_chunks)

    @classmethod
    def probe(cls, inputs: tuple[Any, ...], n_chunks: int, size: int) -> Plan:
        """Only the first ``n_chunks`` chunks of ``size`` items: the rest comes later."""
        return cls(inputs, tuple((i * size, (i + 1) * size) for i in range(n_chunks)))

    @property
    def covered(self) -> int:
        """Items the chunks planned so far cover (from position 0)."""
        return self.bounds[-1][1] if self.bounds else 0

    def extended(self, n_chunks: int) -> Plan:
        """This plan with the items not yet covered split evenly into ``n_chunks`` more."""
        rest = check_inputs(self.inputs) - self.covered
        return self.then(
            [(i + 1) * rest // n_chunks - i * rest // n_chunks for i in range(n_chunks)]
        )

    def then(self, sizes: list[int]) -> Plan:
        """This plan followed by chunks of ``sizes`` items."""
        bounds, start = list(self.bounds), self.covered
        for size in sizes:
            bounds.append((start, start + size))
            start += size
        return Plan(self.inputs, tuple(bounds))

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

    def join(self, parts: list[Any]) -> Any:
        """Join the chunks' results (see the module docstring)."""
        return join(parts)


@dataclass(frozen=True)
class GroupApply:
    """Run ``func`` on every group of a chunk, as ``groupby(...).apply(func)`` would."""

    func: Callable[..., Any]
    by: Any
    level: Any
    options: dict[str, Any]

    @classmethod
    def of(cls, grouped: Any, func: Callable[..., Any]) -> GroupApply:
        """What the workers call on a chunk of ``grouped``: ``func`` per group, same options."""
        by = None if grouped.level is not None else grouped.keys
        options = {
            "sort": grouped.sort,
            "group_keys": grouped.group_keys,
            "dropna": grouped.dropna,
            "observed": grouped.observed,
            "as_index": grouped.as_index,
        }
        if grouped.obj.ndim == 1:
            options.pop("as_index")
        return cls(func, by, grouped.level, options)

    def __call__(self, chunk: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(chunk, tuple):  # a Series with its key values alongside
            chunk, by = chunk
            grouped = chunk.groupby(by, **self.options)
        else:
            grouped = chunk.groupby(by=self.by, level=self.level, **self.options)
        return grouped.apply(self.func, *args, **kwargs)


@dataclass(frozen=True)
class GroupPlan:
    """A groupby cut into chunks of whole groups, in group order.

    Groups are batched so that a chunk holds about ``rows / n_chunks`` rows;
    a group larger than that is a chunk of its own.
    """

    grouped: Any
    rows: tuple[Any, ...]  # row positions of each chunk, ascending
    groups: tuple[tuple[int, int], ...]  # group numbers start:stop of each chunk
    labels: tuple[tuple[Any, Any], ...]  # first and last group key of each chunk

    @classmethod
    def make(cls, grouped: Any, n_chunks: int) -> GroupPlan:
        np, pd = _numpy(), _pandas()
        groupings = grouped._grouper.groupings
        if not grouped.observed and any(
            isinstance(g.grouping_vector, pd.Categorical) for g in groupings
        ):
            n_chunks = 1  # every chunk would repeat the unobserved categories
        numbers = grouped.ngroup().fillna(-1).to_numpy(dtype=np.int64)
        sizes = np.bincount(numbers[numbers >= 0], minlength=grouped.ngroups)
        order = np.argsort(numbers, kind="stable")[(numbers < 0).sum() :]
        total = int(sizes.sum())
        ends = np.concatenate([[0], np.cumsum(sizes)])
        # Cut before group g when the current chunk is full (to the nearest group) for
        # an even share of the rows left, when a group larger than that share starts or
        # ends, or when every group left needs a chunk of its own; never more than
        # min(n_chunks, groups) chunks.
        n = min(n_chunks, len(sizes))
        cuts = [0]
        for g in range(1, len(sizes)):
            if len(cuts) == n:
                break
            start = ends[cuts[-1]]
            share = (total - start) / (n - len(cuts) + 1)
            must = len(sizes) - g == n - len(cuts)
            big = sizes[g] > share or sizes[g - 1] > share
            full = ends[g] - start + sizes[g] / 2 > share
            if must or big or full:
                cuts.append(g)
        cuts.append(len(sizes))
        keys = list(grouped._grouper.result_index) if grouped.ngroups else []
        rows, groups, labels = [], [], []
        for a, b in pairwise(cuts):
            rows.append(np.sort(order[ends[a] : ends[b]]))
            groups.append((a, b))
            labels.append((keys[a], keys[b - 1]))
        return cls(grouped, tuple(rows), tuple(groups), tuple(labels))

    @property
    def data(self) -> Any:
        return self.grouped.obj

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: int) -> Any:
        rows = self.rows[index]
        chunk = self.grouped.obj.iloc[rows]
        if chunk.ndim == 1 and self.grouped.level is None:  # keys may live outside the Series
            return chunk, [key.iloc[rows] for key in self._keys]
        return chunk

    @cached_property
    def _keys(self) -> list[Any]:
        """The grouping keys of a SeriesGroupBy as named Series aligned with its rows."""
        pd = _pandas()
        obj = self.grouped.obj
        return [
            pd.Series(g.grouping_vector, index=obj.index, name=g.name)
            for g in self.grouped._grouper.groupings
        ]

    def items(self, index: int) -> int:
        return len(self.rows[index])

    def info(self, index: int) -> ChunkInfo:
        (start, stop), (first, last) = self.groups[index], self.labels[index]
        return ChunkInfo(index, len(self), start, stop, first, last, True, "groups")

    def join(self, parts: list[Any]) -> Any:
        """Concatenate in group order, as the full ``apply`` would have laid it out."""
        pd, np = _pandas(), _numpy()
        parts = [p for p in parts if p is not None]
        frames = all(isinstance(p, pd.DataFrame | pd.Series) for p in parts)
        if not frames:
            return join(parts)
        obj = self.grouped.obj
        like_indexed = all(
            p.index.equals(obj.index[r]) for p, r in zip(parts, self.rows, strict=True)
        )
        if like_indexed and not self.grouped.group_keys:  # pandas restores the row order
            positions = np.concatenate(self.rows)
            out = pd.concat(parts).iloc[np.argsort(positions, kind="stable")]
            ax = obj.index
            if self.grouped.dropna:  # as pandas: the index of the rows in some group
                mask = np.zeros(len(obj), dtype=bool)
                mask[positions] = True
                ax = ax[mask]
            out.index = ax
            return out
        if all(isinstance(p.index, pd.RangeIndex) and p.index.start == 0 for p in parts):
            return pd.concat(parts, ignore_index=True)
        if not self.grouped.group_keys:
            # A chunk whose every group came back unchanged was put back in row order
            # by pandas; the whole apply was not, so it lays groups out in group order.
            numbers = self.grouped.ngroup().to_numpy()
            parts = [
                p.iloc[np.argsort(numbers[r], kind="stable")]
                if len(p) == len(r) and p.index.equals(obj.index[r])
                else p
                for p, r in zip(parts, self.rows, strict=True)
            ]
        return join(parts)


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
