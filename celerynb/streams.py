"""Feeding a call's chunks to the store as its workers take them, for every kind of input.

A :class:`Feed`'s :class:`Feeder` thread stores a call's chunks in a bounded
window (``planning.Window``): at most so many bytes of chunks stored and not
done yet, and at most ``max_ahead`` waiting for a worker; it is woken when
records come. Sized inputs (ranges, groups, adaptive chunking's later chunks)
and iterators of chunks (data bigger than memory, ``planning.StreamPlan``:
each item is one chunk, read as needed, so the driver's memory stays flat
however long the stream) go through it alike. A store that refuses a write
(at its ``maxmemory``) is waited out for ``FULL_WAIT`` s, then the call fails
with :class:`~celerynb.errors.StoreFull`.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from .errors import CelerynbError, ChunkError, StoreFull
from .inputs import kind_of, nbytes
from .plane import INLINE
from .plane.keys import REDUCED
from .plane.records import CallMeta, Record, Status
from .plane.store import StoreRefused
from .planning import EARLY_BYTES, ChunkPlan, StreamPlan, Window, recut
from .submit import EARLY_BATCH, PUSH_BYTES

if TYPE_CHECKING:
    from .call import Call, Reaction
    from .plane.store import CallBatch

__all__ = [
    "FOLD",
    "Feed",
    "FeedHost",
    "Feeder",
    "Fold",
    "Peeked",
    "StreamPlan",
    "recut",
]

FULL_WAIT = 20.0  # seconds a store that refuses writes (maxmemory) is waited out
ROOM_WAIT = 0.2  # seconds the feeder waits at a time for room in the window
SMALL_CALL_CHUNKS = 64  # a sized call of at most this many chunks and SMALL_CALL_BYTES
SMALL_CALL_BYTES = 2**20  # is stored on the caller's thread (one round trip, no thread)


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


class FeedHost(Protocol):
    """What a :class:`Feed` needs of the runner of its call."""

    @property
    def call(self) -> Call: ...

    def batch(self) -> CallBatch:
        """A batch of store commands about the call."""

    def flush(self, batch: CallBatch, queued: list[int], last: bool, closing: bool = False) -> None:
        """Queue ``queued`` (stored in ``batch``), open or close the call, send ``batch``."""

    def start_draining(self, n_queued: int) -> None:
        """Draining tasks for ``n_queued`` newly queued chunks (the first ones: all of them)."""

    def pending(self) -> int:
        """Chunks stored that no worker has taken yet."""

    def act(self, reaction: Reaction) -> None:
        """Do what the call says (store planned chunks, send a reduction)."""

    def full(self, needed: int, what: str, cause: BaseException | None = None) -> StoreFull:
        """The error of a store that cannot hold ``needed`` bytes of ``what``."""

    def drop_stored(self) -> None:
        """The call ended while chunks were being stored: delete them."""


class Feed:
    """A call's side of its runner (``host``) that stores its chunks: on a thread of their
    own (:class:`Feeder`), within ``window``; ``size``: bytes of the inputs (a sized
    chunk's bytes are estimated from it). With ``reduce=``, an iterator's parts are
    reduced as they come (``fold``)."""

    def __init__(
        self, host: FeedHost, plan: ChunkPlan, window: Window, size: int, n_workers: int
    ) -> None:
        self.host, self.call, self.window = host, host.call, window
        self.size, self.n_workers = size, max(n_workers, 1)
        self.streaming = isinstance(plan, StreamPlan)
        ahead = window.chunks or FOLD
        self.fold = Fold(min(FOLD, ahead)) if self.streaming and self.call.keep else None
        self.todo: deque[int] = deque(() if self.streaming else range(len(plan)))
        self.expecting = not self.streaming and not self.call.planned  # adaptive chunking
        self.outstanding: dict[int, int] = {}  # chunks stored, no record yet -> bytes
        self.outstanding_bytes = 0  # their sum
        self.draining = False  # the first draining tasks were sent
        self._lock = threading.Lock()
        self.preface: tuple[CallMeta, bytes] | None = None  # stored with the first chunks
        self.feeder = Feeder(self)

    def __repr__(self) -> str:
        return f"<Feed {self.plan!r}: {len(self.outstanding)} chunks in the store>"

    @property
    def plan(self) -> ChunkPlan:
        """The call's plan as it is now (adaptive chunking extends it)."""
        return self.call.plan

    def begin(self, job: bytes, meta: CallMeta) -> None:
        """Store the job and the call's description with the first chunks (one round trip),
        and have the feeder store the rest. A sized input stores what fits the window at
        once, on the caller's thread; the feeder's thread starts only if more may come."""
        if self.streaming:
            self.call.streaming = self.call.release = True
        self.preface = (meta, job)
        small = len(self.plan) <= SMALL_CALL_CHUNKS and self.size <= SMALL_CALL_BYTES
        if small and not self.streaming:  # stored now: no thread, no hop
            try:
                self.feeder._fill()
            except Exception as exc:
                self.call.fail(exc)
                raise
        if self.preface is not None:  # nothing stored yet: the description alone
            batch = self.host.batch()
            self.add_preface(batch)
            try:
                self.host.flush(batch, [], last=False)
            except StoreRefused as exc:
                raise self.host.full(len(job), "the call's function", exc) from None
            self.preface = None
        with self._lock:
            more = self.streaming or bool(self.todo) or self.expecting
        if more:
            self.feeder.start()

    def add_preface(self, batch: CallBatch) -> None:
        """The call's description and job, into the first batch."""
        if self.preface is not None:
            meta, job = self.preface
            batch.describe(meta)
            batch.job(job)

    # -- what the runner tells it (the supervisor's thread) ----------------------------------------
    def extend(self, indices: range) -> None:
        """Chunks planned later (adaptive chunking): stored next; every chunk is planned."""
        with self._lock:
            self.todo.extend(indices)
            self.expecting = False
        self.feeder.room.set()

    def done(self, indices: list[int]) -> None:
        """Records came for chunks ``indices``: their bytes left the store."""
        with self._lock:
            for i in indices:
                self.outstanding_bytes -= self.outstanding.pop(i, 0)
        self.feeder.room.set()

    @property
    def all_stored(self) -> bool:
        """Every chunk is stored (an iterator: it is exhausted)."""
        with self._lock:
            left = bool(self.todo) or self.expecting or self.feeder.held is not None
        return not left and (not self.streaming or self.call.planned)

    def in_store(self) -> tuple[int, int]:
        """(chunks, bytes) stored that have no record yet."""
        with self._lock:
            return len(self.outstanding), self.outstanding_bytes

    # -- an iterator's reduce= --------------------------------------------------------------------
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

    def waiting(self) -> int:
        """Chunks stored that no worker has taken yet (and parts waiting to be reduced)."""
        ready = len(self.fold.ready) if self.fold is not None else 0
        return self.host.pending() + ready

    def ended(self) -> None:
        """The iterator is exhausted (the feeder's thread): the call closes."""
        self.host.flush(self.host.batch(), [], last=True, closing=True)
        self.host.act(self.call.stream_ended())


class Feeder(threading.Thread):
    """Stores a feed's chunks as the window has room for them (see :class:`Feed`)."""

    def __init__(self, feed: Feed) -> None:
        super().__init__(name=f"celerynb-feed-{feed.call.id[:8]}", daemon=True)
        self.feed = feed
        self.room = threading.Event()  # set by the supervisor when records came
        self.held: tuple[int, object | None, int] | None = None  # next: index, chunk, bytes

    def __repr__(self) -> str:
        return f"<Feeder of {self.feed.call!r}>"

    def run(self) -> None:
        feed, call = self.feed, self.feed.call
        try:
            while not call.state.ended:
                if self._fill():
                    continue
                if feed.streaming and feed.plan.exhausted and self.held is None:  # type: ignore[attr-defined]
                    feed.ended()
                    return
                self.room.wait(ROOM_WAIT)
                self.room.clear()
        except Exception as exc:  # storing failed: the call fails with it
            call.fail(exc)
        finally:
            if feed.streaming:
                feed.plan.close()  # type: ignore[attr-defined]

    def _next(self) -> tuple[int, object | None, int] | None:
        """The next chunk to store: (index, the chunk if read already, its bytes or estimate);
        None if there is none now."""
        if self.held is not None:
            return self.held
        feed = self.feed
        if feed.streaming:
            plan: StreamPlan = feed.plan  # type: ignore[assignment]
            if plan.exhausted:
                return None
            try:
                index = plan.read()
            except Exception as exc:
                exc.add_note(f"(raised by the input iterator after {len(plan)} chunks were read)")
                raise
            if index is None:
                return None
            chunk = plan.take(index)
            self.held = (index, chunk, nbytes(chunk))
            return self.held
        with feed._lock:
            if not feed.todo:
                return None
            index = feed.todo[0]
        n_items = max(feed.plan.n_items, 1)
        self.held = (index, None, feed.size * feed.plan.items(index) // n_items)
        return self.held

    def _admits(self, size: int, stored: int, waiting: int | None) -> bool:
        """Whether a chunk of ``size`` bytes fits the window now (``stored``: chunks already
        in this batch; ``waiting``: chunks stored that no worker took yet, None: no bound)."""
        window, feed = self.feed.window, self.feed
        if window.limit is not None and size > window.limit:
            raise feed.host.full(size, "one chunk")
        n, held = feed.in_store()
        if n and held + size > window.bytes:
            return False
        return window.chunks is None or waiting is None or waiting + stored < window.chunks

    def _fill(self) -> bool:
        """Store what the window admits now, in batches; whether anything was stored."""
        feed, call = self.feed, self.feed.call
        big_call = feed.size >= EARLY_BYTES and not feed.streaming
        limit = EARLY_BATCH if big_call or feed.streaming else PUSH_BYTES
        first = feed.n_workers if big_call and not feed.draining else 0
        waiting = feed.waiting() if feed.window.chunks is not None else None
        items: list[tuple[int, object, int]] = []
        buffered, stored = 0, 0
        while not call.state.ended:
            got = self._next()
            if got is None or not self._admits(got[2], stored, waiting):
                break
            index, chunk, size = got
            if chunk is None:
                chunk = _cut(feed.plan, index)  # (adaptive chunking extends the plan)
            if not feed.streaming:
                with feed._lock:
                    feed.todo.popleft()
            self.held = None
            items.append((index, chunk, size))
            with feed._lock:  # counted in the window from now on
                feed.outstanding[index] = size
                feed.outstanding_bytes += size
            buffered, stored = buffered + size, stored + 1
            if buffered > limit or len(items) == first:
                self._store(items)
                items, buffered, first = [], 0, 0
        if items:
            self._store(items)
        return stored > 0

    def _store(self, items: list[tuple[int, object, int]]) -> None:
        """Store ``items`` (index, chunk, estimated bytes) in one batch and queue them; the
        first batch sends the draining tasks. A full store is waited out for ``FULL_WAIT`` s."""
        feed, host, call = self.feed, self.feed.host, self.feed.call
        queued = [i for i, _, _ in items]
        deadline = time.monotonic() + FULL_WAIT
        while True:
            batch = host.batch()
            feed.add_preface(batch)
            sizes = {}
            for index, chunk, size in items:
                what = feed.plan.info(index).describe()
                sizes[index] = _put(batch, index, chunk, size >= INLINE, what)
            with feed._lock:
                last = not feed.streaming and not feed.todo and not feed.expecting
            try:
                host.flush(batch, queued, last=last)
                feed.preface = None
                break
            except StoreRefused as exc:
                if call.state.ended:
                    return
                if time.monotonic() >= deadline:
                    needed = sum(sizes.values())
                    raise host.full(needed, f"{len(items)} chunk(s)", exc) from None
                self.room.wait(ROOM_WAIT)
                self.room.clear()
        with feed._lock:
            for index in queued:
                if index in feed.outstanding:
                    feed.outstanding_bytes += sizes[index] - feed.outstanding[index]
                    feed.outstanding[index] = sizes[index]
        if call.state.ended:  # cancelled while storing: those chunks go too
            host.drop_stored()
            return
        host.start_draining(len(queued))
        feed.draining = True


def _cut(plan: ChunkPlan, index: int) -> object:
    """Chunk ``index`` of a sized plan; TypeError naming the chunk if it cannot be cut."""
    try:
        return plan.take(index)
    except (OSError, CelerynbError):
        raise
    except Exception as exc:
        what = plan.info(index).describe()
        raise TypeError(
            f"{what} of the data cannot be cut from the data ({type(exc).__name__}: {exc}); "
            "pass a list, an array or pandas data"
        ) from exc


def _put(batch: CallBatch, index: int, chunk: object, big: bool, what: str) -> int:
    """Chunk ``index`` into ``batch``; its bytes. TypeError naming it if it cannot be pickled."""
    try:
        return batch.chunk(index, chunk, big, what)
    except (OSError, CelerynbError):
        raise
    except Exception as exc:
        raise TypeError(
            f"{what} of the data cannot be pickled ({type(exc).__name__}: {exc}); pass "
            "data made of picklable objects"
        ) from exc


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
