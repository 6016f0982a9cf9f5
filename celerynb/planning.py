"""How inputs are cut into chunks: the plans, the fixed and adaptive rules, their constants.

Fixed rule: ``4 x workers`` chunks (one per worker for a small input, under 64
items per worker: each chunk costs about a millisecond, and an even split of
few items balances as well as a finer one), more if a chunk would exceed
``MAX_CHUNK_BYTES`` (64 MiB), never more chunks than items. A wide DataFrame
(many pandas blocks: a block holds the columns of one NumPy dtype, or one
extension column) is cut into fewer, down to one chunk per worker, so that
the chunks carry at most ``MAX_BLOCKS_MOVED`` blocks in all: each block of
each chunk costs about 0.1 ms to pickle, load and join. It is the default
for small inputs (under 64 items per worker), groupby and ``reduce=`` calls.

Adaptive rule (the default otherwise): one small probe chunk per worker runs
first; from its measured time per item the rest is cut on a guided schedule:
each chunk takes ``1 / (4 x workers)`` of what is left, so chunks shrink
towards the end and a slow tail spreads over all workers; no chunk is planned
shorter than ``TARGET_CHUNK_SECONDS`` (per-chunk overhead) unless that would
leave a worker idle, and none exceeds 64 MiB. ``chunks=`` / ``chunk_size=``
override both rules.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from .errors import ChunkInfo
from .groupby import GroupPlan
from .inputs import _pandas, blocks_of, check_inputs, kind_of, rows
from .join import join
from .sources.base import Source
from .windows import Carried

if TYPE_CHECKING:
    import pandas as pd

MAX_CHUNK_BYTES = 64 * 2**20  # no chunk is planned bigger (unless chunks= says so)
CHUNKS_PER_WORKER = 4  # the fixed rule; also the guided schedule's share
TARGET_CHUNK_SECONDS = 0.05  # adaptive chunking plans no chunk shorter than this
ADAPT_MIN_ITEMS_PER_WORKER = 64  # smaller inputs use the fixed rule
PROBES_PER_WORKER = 32  # a probe chunk holds 1/(32 x workers) of the items
EARLY_BYTES = 8 * 2**20  # calls with more data start before all of it is stored
MAX_BLOCKS_MOVED = 2048  # the fixed rule's chunks carry at most this many pandas blocks
# The window: chunk bytes a call keeps in the store (stored, not yet done) ahead of its workers.
STORE_BYTES_PER_WORKER = 64 * 2**20  # a store without maxmemory: a call's share, per worker
STORE_SHARE = 0.75  # a store with maxmemory: a call's share of its free memory
FILE_WINDOW_BYTES = 2**30  # chunk bytes in shared-memory files ahead of the workers
MIN_CHUNK_BYTES = 2**20  # the byte cap never plans chunks smaller than this


@dataclass(frozen=True)
class Window:
    """How much of a call the store holds at once: chunks of at most ``chunk_bytes``
    (planned so), at most ``bytes`` of chunks stored and not done yet, and at most
    ``chunks`` waiting for a worker (``max_ahead=``; None: as many as ``bytes`` allow).
    ``limit``: the store's free memory when it has a ``maxmemory`` (None: no limit)."""

    chunk_bytes: int
    bytes: int
    chunks: int | None = None
    limit: int | None = None

    @classmethod
    def of_store(
        cls, n_workers: int, free_bytes: int | None, max_ahead: int | None = None
    ) -> Window:
        """The window of a Redis store (``free_bytes``: under its maxmemory, None: no limit).

        Besides the window, the store holds a result per running chunk until the driver
        takes it, and a chunk in transit per worker and for the driver (Redis buffers
        each request and reply): chunks are cut so that all of it fits the call's budget.
        """
        workers = max(n_workers, 1)
        budget = STORE_BYTES_PER_WORKER * max(2, workers)
        if free_bytes is not None:
            budget = min(budget, int(max(free_bytes, 0) * STORE_SHARE))
        chunk = max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, budget // (4 * workers + 8)))
        window = max(chunk, budget - (2 * workers + 2) * chunk)
        return cls(chunk, window, max_ahead, free_bytes)

    @classmethod
    def of_files(cls, free_bytes: int, max_ahead: int | None = None) -> Window:
        """The window of a shared-memory plane with ``free_bytes`` on its tmpfs."""
        window = max(MAX_CHUNK_BYTES, min(FILE_WINDOW_BYTES, free_bytes // 2))
        return cls(MAX_CHUNK_BYTES, window, max_ahead)


class ChunkPlan(Protocol):
    """How one call's input is cut: what chunk ``i`` is, where it sits, how to join."""

    @property
    def data(self) -> object:
        """The first input (its index labels name the chunks)."""

    @property
    def n_items(self) -> int: ...

    def __len__(self) -> int: ...

    def take(self, index: int) -> object:
        """Chunk ``index``, as ``func`` receives it."""

    def items(self, index: int) -> int: ...

    def info(self, index: int) -> ChunkInfo: ...

    def join(self, parts: list[object]) -> object: ...


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def n_chunks_for(
    n_items: int,
    n_workers: int,
    size: int = 0,
    chunks: int | None = None,
    chunk_size: int | None = None,
    blocks: int = 1,
    per_worker: int = CHUNKS_PER_WORKER,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> int:
    """How many chunks the fixed rule cuts ``n_items`` into (``chunks=`` / ``chunk_size=`` win).

    ``blocks``: pandas blocks of one chunk of the inputs (see the module docstring);
    ``per_worker``: chunks per worker before the byte and block limits;
    ``max_chunk_bytes``: the biggest chunk planned (``Window.chunk_bytes``).
    """
    if chunks is not None and chunk_size is not None:
        raise ValueError("pass chunks= or chunk_size=, not both")
    if chunks is not None:
        wanted = _positive_int("chunks", chunks)
    elif chunk_size is not None:
        wanted = math.ceil(n_items / _positive_int("chunk_size", chunk_size))
    else:
        workers = max(n_workers, 1)
        wanted = min(per_worker * workers, max(workers, MAX_BLOCKS_MOVED // blocks))
        wanted = max(wanted, math.ceil(size / max_chunk_bytes))
    return max(1, min(wanted, n_items))


@dataclass(frozen=True)
class RangePlan:
    """Inputs cut by position: chunk ``i`` covers ``bounds[i]`` of each input (like zip),
    and carries the ``overlap`` items before it (see :mod:`celerynb.windows`)."""

    inputs: tuple[object, ...]
    bounds: tuple[tuple[int, int], ...]
    overlap: int = 0

    @classmethod
    def even(cls, inputs: tuple[object, ...], n_chunks: int, overlap: int = 0) -> RangePlan:
        """All items, in ``n_chunks`` chunks of (nearly) equal length."""
        rest = check_inputs(inputs)
        return cls(inputs, (), overlap).then(
            [(i + 1) * rest // n_chunks - i * rest // n_chunks for i in range(n_chunks)]
        )

    @property
    def covered(self) -> int:
        """Items the chunks planned so far cover (from position 0)."""
        return self.bounds[-1][1] if self.bounds else 0

    def then(self, sizes: Sequence[int]) -> RangePlan:
        """This plan followed by chunks of ``sizes`` items."""
        bounds, start = list(self.bounds), self.covered
        for size in sizes:
            bounds.append((start, start + size))
            start += size
        return replace(self, bounds=tuple(bounds))

    @property
    def data(self) -> object:
        return self.inputs[0]

    @property
    def n_items(self) -> int:
        return len(cast("Sized", self.inputs[0]))

    def __len__(self) -> int:
        return len(self.bounds)

    def take(self, index: int) -> object:
        """A slice of the input, or a tuple of slices of each input (``Carried`` with the
        items before it, for an ``overlap``)."""
        start, stop = self.bounds[index]
        first = max(0, start - self.overlap)
        parts = tuple(rows(data, first, stop) for data in self.inputs)
        chunk = parts if len(parts) > 1 else parts[0]
        return Carried(chunk, start - first) if self.overlap else chunk

    @property
    def labels(self) -> pd.Index | None:
        """The first input's index labels (its own labels, for an Index; None: no labels)."""
        data = self.data
        if _pandas() is None:  # no pandas loaded: no pandas data
            return None
        import pandas as pd

        if isinstance(data, pd.Index):
            return data
        return data.index if isinstance(data, pd.DataFrame | pd.Series) else None

    def info(self, index: int) -> ChunkInfo:
        start, stop = self.bounds[index]
        labels = self.labels
        if labels is not None and stop > start:
            return ChunkInfo(index, len(self), start, stop, labels[start], labels[stop - 1], True)
        return ChunkInfo(index, len(self), start, stop)

    def items(self, index: int) -> int:
        start, stop = self.bounds[index]
        return stop - start

    def join(self, parts: list[object]) -> object:
        return join(parts, self.labels)


@dataclass(frozen=True)
class AdaptivePlanner:
    """The adaptive rule: probe chunks first, then the rest sized from their times."""

    n_items: int
    workers: int
    size: int  # bytes of the inputs
    max_chunk_bytes: int = MAX_CHUNK_BYTES  # the biggest chunk planned

    @classmethod
    def applies(cls, n_items: int, workers: int) -> bool:
        return n_items >= ADAPT_MIN_ITEMS_PER_WORKER * workers

    def probes(self, inputs: tuple[object, ...], overlap: int = 0) -> RangePlan:
        """One probe chunk per worker, each 1/(32 x workers) of the items (at most 64 MiB)."""
        per_probe = min(
            self.n_items // (PROBES_PER_WORKER * self.workers),
            max(1, self.n_items * self.max_chunk_bytes // max(self.size, 1)),
        )
        return RangePlan(inputs, (), overlap).then([max(1, per_probe)] * self.workers)

    def rest(self, covered: int, seconds_per_item: float) -> list[int]:
        """Sizes of the chunks after the first ``covered`` items (see the module docstring)."""
        per_item = max(seconds_per_item, 1e-9)
        workers, left = self.workers, self.n_items - covered
        lowest = math.ceil(TARGET_CHUNK_SECONDS / per_item)
        highest = max(1, math.ceil(left / workers))
        if self.size:
            highest = min(highest, max(1, self.n_items * self.max_chunk_bytes // self.size))
        if self.size >= EARLY_BYTES:  # big data: chunks small enough to pipeline the copies
            highest = min(highest, math.ceil(self.n_items / (CHUNKS_PER_WORKER * workers)))
        sizes = []
        while left > 0:
            size = min(max(math.ceil(left / (CHUNKS_PER_WORKER * workers)), lowest), highest, left)
            if left - size < lowest // 2:  # no crumb of a chunk at the end
                size = min(left, highest)
            sizes.append(size)
            left -= size
        return sizes


def make_plan(
    inputs: tuple[object, ...],
    workers: int,
    size: int,
    chunks: int | None,
    chunk_size: int | None,
    fixed: bool,
    overlap: int = 0,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[ChunkPlan, AdaptivePlanner | None]:
    """The first chunks of a call, and the adaptive planner that adds the rest (or None).

    ``fixed`` forces the fixed rule (``reduce=`` calls); ``overlap``: items before each
    chunk that it carries too; ``max_chunk_bytes``: the biggest chunk the rules plan.
    """
    n_items = check_inputs(inputs)
    if n_items < 0:  # iterators of chunks
        if chunks is not None:
            raise ValueError(
                "chunks= needs a known length; an iterator's items are its chunks. "
                "Pass chunk_size=N to re-cut them into N items each"
            )
        size_each = None if chunk_size is None else _positive_int("chunk_size", chunk_size)
        return StreamPlan(inputs, size_each), None
    if isinstance(inputs[0], Source):
        if chunks is not None or chunk_size is not None:
            raise ValueError(
                "files the workers read are cut into parts by their blocksize=: pass "
                "blocksize= to read_csv / read_json / read_parquet instead of chunks= or "
                "chunk_size="
            )
        return inputs[0].plan(), None
    if kind_of(inputs[0]) == "groupby":
        n_groups = n_chunks_for(
            n_items, workers, size, chunks, chunk_size, max_chunk_bytes=max_chunk_bytes
        )
        return GroupPlan.make(inputs[0], n_groups), None
    large = AdaptivePlanner.applies(n_items, workers)
    if chunks is None and chunk_size is None and not fixed and large:
        planner = AdaptivePlanner(n_items, workers, size, max_chunk_bytes)
        return planner.probes(inputs, overlap), planner
    blocks = sum(blocks_of(data) for data in inputs)
    per_worker = CHUNKS_PER_WORKER if large else 1
    n_chunks = n_chunks_for(
        n_items, workers, size, chunks, chunk_size, blocks, per_worker, max_chunk_bytes
    )
    return RangePlan.even(inputs, n_chunks, overlap), None


# -- iterators of chunks (data bigger than memory) ----------------------------------------------
def _size(item: object) -> int:
    try:
        return len(item)  # type: ignore[arg-type]
    except TypeError:
        return 1


def recut(chunks: Iterator[object], size: int) -> Iterator[object]:
    """The items of ``chunks`` again, cut into chunks of ``size`` items (the last may be short)."""
    held: list[object] = []  # pieces making up the next chunk
    count = 0
    for chunk in chunks:
        start, length = 0, _size(chunk)
        while start < length:
            take = min(size - count, length - start)
            held.append(chunk if take == length else rows(chunk, start, start + take))
            start, count = start + take, count + take
            if count == size:
                yield held[0] if len(held) == 1 else join(held)
                held, count = [], 0
    if held:
        yield held[0] if len(held) == 1 else join(held)


class StreamPlan:
    """Chunks read from ``inputs`` (iterators, zipped like ``zip`` when several)."""

    data: Any = None  # no whole input to name the chunks by

    def __init__(self, inputs: tuple[object, ...], chunk_size: int | None = None) -> None:
        self._iterators: list[Iterator[object]] = [iter(x) for x in inputs]  # type: ignore[call-overload]
        if chunk_size is not None:
            self._iterators = [recut(it, chunk_size) for it in self._iterators]
        self._closers = [getattr(x, "close", None) for x in inputs]
        self.zipped = len(inputs) > 1
        hint = operator.length_hint(inputs[0], -1) if len(inputs) == 1 else -1
        self.hint = hint if hint > 0 else None  # chunks to expect, if the input says
        self.exhausted = False
        self._bounds: list[tuple[int, int]] = []
        self._labels: list[tuple[object, object] | None] = []
        self._read: dict[int, object] = {}  # read, not stored yet

    def __repr__(self) -> str:
        state = "exhausted" if self.exhausted else "open"
        return f"<StreamPlan {state}: {len(self)} chunks, {self.n_items} items>"

    @property
    def n_items(self) -> int:
        return self._bounds[-1][1] if self._bounds else 0

    def __len__(self) -> int:
        return len(self._bounds)

    def read(self) -> int | None:
        """Read the next chunk; its number, or None when the input is exhausted.

        Exceptions of the input's iterator propagate (the caller notes how far it got).
        """
        try:
            parts = [next(it) for it in self._iterators]
        except StopIteration:
            self.exhausted = True
            self.close()
            return None
        item = tuple(parts) if self.zipped else parts[0]
        size = _size(parts[0])
        start = self.n_items
        self._bounds.append((start, start + size))
        self._labels.append(_labels(parts[0]))
        index = len(self._bounds) - 1
        self._read[index] = item
        return index

    def close(self) -> None:
        """Close the inputs that can be (files of ``read_csv(chunksize=)``, generators)."""
        for close in self._closers:
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    def take(self, index: int) -> object:
        """Chunk ``index`` as read, handed over once (to be stored) and then forgotten."""
        return self._read.pop(index)

    def items(self, index: int) -> int:
        start, stop = self._bounds[index]
        return stop - start

    def info(self, index: int) -> ChunkInfo:
        start, stop = self._bounds[index]
        total = len(self) if self.exhausted else (self.hint or -1)
        labels = self._labels[index]
        if labels is None:
            return ChunkInfo(index, total, start, stop, unit="items")
        return ChunkInfo(index, total, start, stop, labels[0], labels[1], True, "items")

    def join(self, parts: list[Any]) -> Any:
        return join(parts)


def _labels(item: object) -> tuple[object, object] | None:
    """The first and last index label of a pandas chunk (None for others)."""
    pd = _pandas()
    if pd is not None and isinstance(item, pd.DataFrame | pd.Series) and len(item):
        return item.index[0], item.index[-1]
    return None
