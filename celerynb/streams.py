"""Iterators of chunks (data bigger than memory): each item is one chunk, read as needed.

Their plan (``planning.StreamPlan``) keeps only what it needs of each chunk
once stored (its size and first and last labels), so the driver's memory
stays flat however long the stream. A ``StreamFeed``'s ``Feeder`` thread
reads ahead at most ``max_ahead`` chunks that the workers have not taken yet.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from .errors import CelerynbError, ChunkError
from .inputs import kind_of, nbytes
from .plane import INLINE
from .plane.keys import REDUCED
from .plane.records import CallMeta, Record, Status
from .planning import StreamPlan, recut

if TYPE_CHECKING:
    from .call import Call, Reaction
    from .plane.store import CallBatch

__all__ = ["FOLD", "Feeder", "Fold", "Peeked", "StreamFeed", "StreamHost", "StreamPlan", "recut"]


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


class StreamHost(Protocol):
    """What a :class:`StreamFeed` needs of the runner of its call."""

    @property
    def call(self) -> Call: ...

    def batch(self) -> CallBatch:
        """A batch of store commands about the call."""

    def flush(self, batch: CallBatch, queued: list[int], last: bool, closing: bool = False) -> None:
        """Queue ``queued`` (stored in ``batch``), open or close the call, send ``batch``."""

    def start_draining(self) -> None:
        """Send the call's first draining tasks."""

    def pending(self) -> int:
        """Chunks stored that no worker has taken yet."""

    def act(self, reaction: Reaction) -> None:
        """Do what the call says (store planned chunks, send a reduction)."""


class StreamFeed:
    """An iterator input's side of a call's runner (``host``): its chunks are read and
    stored one by one on a thread of their own, at most ``max_ahead`` waiting for a worker;
    with ``reduce=``, its parts are reduced as they come (``fold``)."""

    def __init__(self, host: StreamHost, plan: StreamPlan, max_ahead: int) -> None:
        self.host, self.call, self.plan = host, host.call, plan
        self.fold = Fold(min(FOLD, max_ahead)) if self.call.keep else None
        self.feeder = Feeder(self, max_ahead)

    def __repr__(self) -> str:
        return f"<StreamFeed {self.plan!r}>"

    def begin(self, job: bytes, meta: CallMeta) -> None:
        """Store the job and the call's description, open the call (more chunks come),
        start reading."""
        self.call.streaming = self.call.release = True
        batch = self.host.batch()
        batch.describe(meta)
        batch.job(job)
        self.host.flush(batch, [], last=False)
        self.feeder.start()

    def store(self, index: int) -> None:
        """Store chunk ``index`` (the feeder's thread); the first sends the draining tasks."""
        batch = self.host.batch()
        chunk, what = self.plan.take(index), self.plan.info(index).describe()
        try:
            batch.chunk(index, chunk, nbytes(chunk) >= INLINE, what)
        except (OSError, CelerynbError):
            raise
        except Exception as exc:
            raise TypeError(
                f"{what} of the data cannot be pickled ({type(exc).__name__}: {exc}); pass "
                "data made of picklable objects"
            ) from exc
        del chunk
        self.host.flush(batch, [index], last=False)
        if index == 0:
            self.host.start_draining()

    def ahead(self) -> int:
        """Chunks stored that no worker has taken yet (and parts waiting to be reduced)."""
        waiting = len(self.fold.ready) if self.fold is not None else 0
        return self.host.pending() + waiting

    def takes(self, record: Record) -> bool:
        """Note a stored part for the fold; take a partial reduction's record (True)."""
        if record.index >= 0:
            if self.fold is not None:
                self.fold.ready.add(record.index)
            return False
        if record.index == REDUCED:
            return False
        if record.status is Status.ERROR:
            call = self.call
            call.fail(ChunkError.build(record.failure, None, "the reducer", *call.funcs))
        elif self.fold is not None:
            self.fold.busy = False
        return True

    def reduction_due(self) -> tuple[list[int], int] | None:
        call = self.call
        if self.fold is None or call.state.ended:
            return None
        return self.fold.next(call.streaming, call.n_chunks)

    def ended(self) -> None:
        """The iterator is exhausted (the feeder's thread): the call closes."""
        self.host.flush(self.host.batch(), [], last=True, closing=True)
        self.host.act(self.call.stream_ended())


class Feeder(threading.Thread):
    """Reads a stream's chunks and has them stored, ``max_ahead`` at most waiting."""

    def __init__(self, feed: StreamFeed, max_ahead: int) -> None:
        super().__init__(name=f"celerynb-feed-{feed.call.id[:8]}", daemon=True)
        self.feed, self.max_ahead = feed, max(1, max_ahead)
        self.room = threading.Event()  # set by the supervisor when chunks were taken

    def run(self) -> None:
        feed, call = self.feed, self.feed.call
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
