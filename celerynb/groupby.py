"""groupby inputs: whole groups batched into chunks, ``func`` applied per group, and the
join that lays the results out as ``df.groupby(...).apply(func)`` would.

The driver splits with the groupby's own grouper (any key form pandas accepts:
column names, index levels, arrays, lists, Index, Categorical, Series, dicts,
functions, ``pd.Grouper``), so a chunk is a run of pandas' own group order:
the rows of its groups, sorted as ``apply`` sorts them, with each group's
start and key. Workers call ``func`` on every group and send back the
per-group results; the driver hands all of them, in group order, to pandas'
own assembly, which decides the result's shape from every group's result,
as the serial ``apply`` does.

pandas internals used (as pandas 3 has them): ``_grouper`` (``ids``,
``ngroups``, ``result_index``, ``result_ilocs``), ``_obj_with_exclusions`` (what
``apply`` splits) and ``_wrap_applied_output`` (its assembly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from .errors import ChunkInfo
from .inputs import nbytes, numpy, pandas
from .plane import INLINE

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from numpy.typing import NDArray

    Frame: TypeAlias = pd.DataFrame | pd.Series
    Positions: TypeAlias = NDArray[np.intp]


class Grouper(Protocol):
    """What is used of a groupby's grouper (pandas 3's ``groupby._grouper``)."""

    @property
    def ids(self) -> Positions: ...  # each row's group number (-1: left out)
    @property
    def ngroups(self) -> int: ...
    @property
    def result_ilocs(self) -> Positions: ...  # the kept rows, in group order
    @property
    def result_index(self) -> pd.Index: ...  # the groups' keys


class Grouped(Protocol):
    """What is used of a pandas DataFrameGroupBy / SeriesGroupBy (pandas 3)."""

    @property
    def obj(self) -> Frame: ...
    @property
    def _grouper(self) -> Grouper: ...
    @property
    def _obj_with_exclusions(self) -> Frame: ...  # what apply splits
    def _wrap_applied_output(
        self, data: Frame, values: list[object], not_indexed_same: bool, is_transform: bool
    ) -> object: ...  # apply's assembly of the groups' results


@dataclass(frozen=True)
class GroupChunk:
    """Whole groups for one chunk: their rows in group order, where each group starts
    (``starts[j]:starts[j + 1]``), and their keys (a slice of the groupby's result index)."""

    data: Frame
    starts: Positions
    keys: pd.Index


@dataclass(frozen=True)
class GroupResults:
    """One chunk's result for a groupby (what ``as_completed`` yields and ``reduce=``
    gets): the chunk's group ``keys``, ``func``'s result for each (``values``, in the
    same order), and whether any result was not indexed like its group (``mutated``:
    then ``apply`` does not put the rows back in their original order)."""

    keys: pd.Index
    values: list[object]
    mutated: bool

    def items(self) -> Iterator[tuple[object, object]]:
        """``(key, result)`` for each group of the chunk."""
        return zip(self.keys, self.values, strict=True)

    @property
    def nbytes(self) -> int:
        """Bytes of the array and frame results, counted until they pass ``INLINE`` (what
        decides whether they go through shared memory)."""
        total = 0
        for value in self.values:
            total += nbytes(value)
            if total >= INLINE:
                break
        return total

    def __reduce__(self) -> tuple[object, ...]:
        return (_unpack, (self.keys, _pack(self.values), self.mutated))


def _pack(values: list[object]) -> object:
    """NumPy scalars of one dtype (a scalar per group) as one array: pickling 100,000
    scalars one by one takes a quarter of a second."""
    np = numpy()
    first = values[0] if values else None
    dtype = getattr(first, "dtype", None) if isinstance(first, np.generic) else None
    if (
        dtype is not None
        and dtype.kind in "biufcmM"
        and all(type(v) is type(first) and getattr(v, "dtype", None) == dtype for v in values)
    ):
        return np.array(values, dtype=dtype)
    return values


def _unpack(keys: pd.Index, values: Iterable[object], mutated: bool) -> GroupResults:
    return GroupResults(keys, list(values), mutated)


def _indexed_like(result: object, axes: list[pd.Index]) -> bool:
    """Whether ``result`` keeps its group's row index (pandas then restores the row order)."""
    pd = pandas()
    if isinstance(result, pd.DataFrame):
        return bool(result.index.equals(axes[0]))
    if isinstance(result, pd.Series):
        return len(axes) == 1 and bool(result.index.equals(axes[0]))
    return False


@dataclass(frozen=True)
class GroupApply:
    """What the workers call on a :class:`GroupChunk`: ``func`` on each group, named by its key."""

    func: Callable[..., object]

    @classmethod
    def of(cls, grouped: object, func: Callable[..., object]) -> GroupApply:
        """The per-group wrapper of ``func`` for ``grouped`` (the groups travel in chunks)."""
        return cls(func)

    def __call__(self, chunk: GroupChunk, *args: object, **kwargs: object) -> GroupResults:
        values: list[object] = []
        mutated, data = False, chunk.data
        for key, start, stop in zip(chunk.keys, chunk.starts[:-1], chunk.starts[1:], strict=True):
            group = data.iloc[start:stop]
            object.__setattr__(group, "name", key)  # as pandas names a group (a Series' name)
            axes = group.axes  # before func, which may change the group
            try:
                result = self.func(group, *args, **kwargs)
            except Exception as exc:
                exc.add_note(f"(in the group with key {key!r})")
                raise
            mutated = mutated or not _indexed_like(result, axes)
            values.append(result)
        return GroupResults(chunk.keys, values, mutated)


def _cuts(sizes: Positions, ends: Positions, n: int) -> list[int]:
    """Where the chunks of groups start (and the groups' end), for at most ``n`` chunks.

    Cut before group g when the current chunk is full (to the nearest group) for an
    even share of the rows left, when a group larger than that share starts or ends,
    or when every group left needs a chunk of its own. Each cut is found with
    vectorised searches over the groups up to it, so a million groups cost little.
    """
    np = numpy()
    n_groups, total = len(sizes), int(ends[-1])
    middles = ends[:-1] + sizes / 2  # full(g): the chunk reaches past group g's middle
    larger = np.maximum(sizes, np.concatenate([[0], sizes[:-1]]))  # group g or g - 1
    cuts = [0]
    while len(cuts) < n:
        last, start = cuts[-1], int(ends[cuts[-1]])
        share = (total - start) / (n - len(cuts) + 1)
        full = max(int(np.searchsorted(middles, start + share, side="right")), last + 1)
        must = n_groups - n + len(cuts)  # every group left gets a chunk of its own
        nearest = min(full, must if must > last else n_groups)
        big = np.flatnonzero(larger[last + 1 : nearest] > share)
        cut = last + 1 + int(big[0]) if len(big) else nearest
        if cut >= n_groups:
            break
        cuts.append(cut)
    cuts.append(n_groups)
    return cuts


@dataclass(frozen=True)
class GroupPlan:
    """A groupby cut into chunks of whole groups, in group order.

    Groups are batched so that a chunk holds about ``rows / n_chunks`` rows;
    a group larger than that is a chunk of its own.
    """

    grouped: Grouped
    groups: tuple[tuple[int, int], ...]  # group numbers start:stop of each chunk
    order: Positions  # the positions of the grouped rows in group order (pandas' own)
    ends: Positions  # group g is order[ends[g]:ends[g + 1]]

    @classmethod
    def make(cls, groupby: object, n_chunks: int) -> GroupPlan:
        np = numpy()
        grouped = cast(Grouped, groupby)
        grouper = grouped._grouper
        n_groups = grouper.ngroups
        sizes = np.bincount(grouper.ids + 1, minlength=n_groups + 1)[1:]  # (-1: dropped NaN)
        order = grouper.result_ilocs  # pandas' own group order of the rows it keeps
        ends = np.concatenate([[0], np.cumsum(sizes)])
        cuts = _cuts(sizes, ends, min(n_chunks, n_groups))
        return cls(grouped, tuple(pairwise(cuts)), order, ends)

    @property
    def data(self) -> Frame:
        return self.grouped.obj

    @property
    def n_items(self) -> int:
        """Rows (what the chunks' ``items`` count)."""
        return len(self.grouped.obj)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def rows(self) -> tuple[Positions, ...]:
        """The row positions of each chunk, in group order."""
        return tuple(self.order[self.ends[a] : self.ends[b]] for a, b in self.groups)

    @cached_property
    def _applied_to(self) -> Frame:
        """What ``apply`` splits: the grouped object without its grouping columns."""
        return self.grouped._obj_with_exclusions

    @cached_property
    def _sorted_index(self) -> pd.Index:
        """The index of the rows in group order, as ``apply`` takes them."""
        return self._applied_to.index.take(self.grouped._grouper.result_ilocs)

    def take(self, index: int) -> GroupChunk:
        """The chunk's groups, exactly as they are cut from ``apply``'s rows in group order
        (a positional take of fewer rows could make another kind of index, e.g. a range)."""
        a, b = self.groups[index]
        first, last = self.ends[a], self.ends[b]
        data = self._applied_to.take(self.order[first:last])
        data.index = self._sorted_index[first:last]
        keys = self.grouped._grouper.result_index[a:b]
        return GroupChunk(data, self.ends[a : b + 1] - first, keys)

    def items(self, index: int) -> int:
        a, b = self.groups[index]
        return int(self.ends[b] - self.ends[a])

    @property
    def labels(self) -> list[tuple[object, object]]:
        """The first and last group key of each chunk (None for a chunk of no groups)."""
        return [self._ends(i) for i in range(len(self))]

    def _ends(self, index: int) -> tuple[object, object]:
        start, stop = self.groups[index]
        keys = self.grouped._grouper.result_index
        return (keys[start], keys[stop - 1]) if stop > start else (None, None)

    def info(self, index: int) -> ChunkInfo:
        (start, stop), (first, last) = self.groups[index], self._ends(index)
        return ChunkInfo(index, len(self), start, stop, first, last, True, "groups")

    def join(self, parts: list[object]) -> object:
        """pandas' own assembly of every group's result (``parts``: a chunk's
        :class:`GroupResults` each), as the whole ``apply`` makes it."""
        results = cast("list[GroupResults]", parts)
        values = [v for part in results for v in part.values]
        mutated = any(part.mutated for part in results)
        return self.grouped._wrap_applied_output(self._applied_to, values, mutated, False)
