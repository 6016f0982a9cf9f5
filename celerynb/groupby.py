"""groupby inputs: whole groups batched into chunks, ``func`` applied per group, and the
join that lays the parts out as ``df.groupby(...).apply(func)`` would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

from .errors import ChunkInfo
from .inputs import numpy, pandas
from .join import join


@dataclass(frozen=True)
class GroupApply:
    """Run ``func`` on every group of a chunk, as ``groupby(...).apply(func)`` would."""

    func: Callable[..., Any]
    by: Any
    level: Any
    options: dict[str, object]

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

    def __call__(self, chunk: Any, *args: object, **kwargs: object) -> Any:
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
        np, pd = numpy(), pandas()
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

    @property
    def n_items(self) -> int:
        """Rows (what the chunks' ``items`` count)."""
        return len(self.grouped.obj)

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
        pd = pandas()
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
        pd, np = pandas(), numpy()
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
