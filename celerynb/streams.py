"""Iterators of chunks (data bigger than memory): each item is one chunk, read as needed.

``StreamPlan`` keeps only what it needs of each chunk once stored (its size
and first and last labels), so the driver's memory stays flat however long
the stream. The runner's ``Feeder`` thread reads ahead at most ``max_ahead``
chunks that the workers have not taken yet.
"""

from __future__ import annotations

import contextlib
import json
import operator
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import CelerynbError, ChunkError, ChunkInfo
from .inputs import _pandas, nbytes, rows
from .join import join
from .plane import INLINE, codec
from .plane.keys import REDUCED, TTL
from .plane.records import Record, Status

if TYPE_CHECKING:
    from redis.client import Pipeline

    from .runner import CallRunner


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


_END = object()


class Peeked:
    """An iterator input with its first item read, checked to be a chunk, and put back."""

    def __init__(self, source: object) -> None:
        self.source = source
        self._it: Iterator[object] = iter(source)  # type: ignore[call-overload]
        self.first = next(self._it, _END)  # the iterator's own errors are raised here, as is
        self.empty = self.first is _END
        if not self.empty:
            _check_chunk(self.first)

    def __repr__(self) -> str:
        return f"<Peeked {type(self.source).__name__}>"

    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        if self.first is not _END:
            first, self.first = self.first, _END
            return first
        return next(self._it)

    def __length_hint__(self) -> int:
        left = operator.length_hint(self._it, -1)
        return left + (self.first is not _END) if left >= 0 else NotImplemented

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if callable(close):
            close()


def _check_chunk(item: object) -> None:
    from .inputs import kind_of

    try:
        kind: str | None = kind_of(item)
    except TypeError:
        kind = None
    if kind not in ("pandas", "numpy", "sequence"):
        raise TypeError(
            "an iterator's items are its chunks (DataFrames, Series, arrays or lists), but "
            f"this one gives a {type(item).__name__} first; to split an iterator of single "
            "items, pass list(...) of it"
        )


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


class StreamFeed:
    """An iterator input's side of a call's runner: its chunks are read and stored one by
    one on a thread of their own, at most ``max_ahead`` waiting for a worker; with
    ``reduce=``, its parts are reduced as they come (``fold``)."""

    def __init__(self, runner: CallRunner, plan: StreamPlan, max_ahead: int) -> None:
        self.runner, self.plan = runner, plan
        self.fold = Fold(min(FOLD, max_ahead)) if runner.call.keep else None
        self.feeder = Feeder(self, max_ahead)

    def __repr__(self) -> str:
        return f"<StreamFeed {self.plan!r}>"

    def begin(self, job: bytes, before: Callable[[Pipeline], None]) -> None:
        """Store the job (``before``: commands that go first), open the call (more chunks
        come), start reading."""
        r = self.runner
        r.call.streaming = r.call.release = True
        pipe = r.cluster.redis.pipeline(transaction=False)
        before(pipe)
        pipe.set(r.keys.func, job, ex=TTL)
        r.submission.flush(pipe, [], last=False)
        self.feeder.start()

    def store(self, index: int) -> None:
        """Store chunk ``index`` (the feeder's thread); the first sends the draining tasks."""
        r = self.runner
        pipe = r.cluster.redis.pipeline(transaction=False)
        chunk, what = self.plan.take(index), self.plan.info(index).describe()
        try:
            r.cluster.plane.put_chunk(pipe, r.keys, index, chunk, nbytes(chunk) >= INLINE, what)
        except (OSError, CelerynbError):
            raise
        except Exception as exc:
            raise TypeError(
                f"{what} of the data cannot be pickled ({type(exc).__name__}: {exc}); pass "
                "data made of picklable objects"
            ) from exc
        del chunk
        r.submission.flush(pipe, [index], last=False)
        if index == 0:
            r.submission.publish(r.submission.n_workers)

    def ahead(self) -> int:
        """Chunks stored that no worker has taken yet (and parts waiting to be reduced)."""
        waiting = len(self.fold.ready) if self.fold is not None else 0
        r = self.runner
        return int(r.cluster.redis.llen(r.keys.pending)) + waiting

    def takes(self, record: Record) -> bool:
        """Note a stored part for the fold; take a partial reduction's record (True)."""
        if record.index >= 0:
            if self.fold is not None:
                self.fold.ready.add(record.index)
            return False
        if record.index == REDUCED:
            return False
        if record.status is Status.ERROR:
            call = self.runner.call
            call.fail(ChunkError.build(record.failure, None, "the reducer", *call.funcs))
        elif self.fold is not None:
            self.fold.busy = False
        return True

    def reduction_due(self) -> tuple[list[int], int] | None:
        call = self.runner.call
        if self.fold is None or call.state.ended:
            return None
        return self.fold.next(call.streaming, call.n_chunks)

    def send_fold(self, parts: list[int], out: int) -> None:
        """Ask the draining tasks for a partial reduction (signed, like every payload)."""
        r = self.runner
        blob = codec.sign(r.cluster.settings.secret, json.dumps([parts, out]).encode())
        r.cluster.redis.rpush(r.keys.folds, blob)

    def ended(self) -> None:
        """The iterator is exhausted (the feeder's thread): the call closes."""
        r = self.runner
        r.submission.flush(r.cluster.redis.pipeline(transaction=False), [], last=True, closing=True)
        r._act(r.call.stream_ended())


class Feeder(threading.Thread):
    """Reads a stream's chunks and has them stored, ``max_ahead`` at most waiting."""

    def __init__(self, feed: StreamFeed, max_ahead: int) -> None:
        super().__init__(name=f"celerynb-feed-{feed.runner.call.id[:8]}", daemon=True)
        self.feed, self.max_ahead = feed, max(1, max_ahead)
        self.room = threading.Event()  # set by the supervisor when chunks were taken

    def run(self) -> None:
        feed, call = self.feed, self.feed.runner.call
        try:
            while not call.state.ended:
                if feed.ahead() >= self.max_ahead:
                    self.room.wait(0.2)
                    self.room.clear()
                    continue
                try:
                    index = feed.plan.read()
                except Exception as exc:
                    exc.add_note(
                        f"(raised by the input iterator after {len(feed.plan)} chunks were read)"
                    )
                    call.fail(exc)
                    return
                if index is None:
                    feed.ended()
                    return
                feed.store(index)
        except Exception as exc:  # storing failed: the call fails with it
            call.fail(exc)
        finally:
            feed.plan.close()


FOLD = 8  # parts of an iterator's reduce= call reduced at a time


class Fold:
    """A ``reduce=`` call over an iterator: its parts are reduced as they come, in chunk
    order, ``size`` at a time (default ``FOLD``) with the previous partial result, one
    reduction at a time.
    The reducer must combine partial results: ``reduce([reduce(a), reduce(b)])`` equals
    ``reduce(a + b)`` (true of ``sum``, merging counts, concatenating lists)."""

    def __init__(self, size: int = FOLD) -> None:
        self.size = max(1, size)  # no more than the read-ahead: the feeder waits for these
        self.ready: set[int] = set()  # stored parts not reduced yet
        self.next_chunk = 0  # the first chunk not reduced yet
        self.acc: int | None = None  # the partial result so far (a part number below -1)
        self.busy = False  # a reduction is running
        self._next_id = -2

    def __repr__(self) -> str:
        return f"<Fold at chunk {self.next_chunk}, {len(self.ready)} parts waiting>"

    def next(self, streaming: bool, n_chunks: int) -> tuple[list[int], int] | None:
        """The next reduction to send (parts, and where its result goes), if one is due."""
        if self.busy:
            return None
        run, i = [], self.next_chunk
        while i in self.ready:
            run.append(i)
            i += 1
        last = not streaming and self.next_chunk + len(run) == n_chunks
        if not last and len(run) < self.size:
            return None
        parts = ([self.acc] if self.acc is not None else []) + run
        out = REDUCED if last else self._next_id
        if not last:
            self._next_id -= 1
        self.ready.difference_update(run)
        self.next_chunk += len(run)
        self.acc, self.busy = out, True
        return parts, out
