"""One call's state machine: chunk records in, progress and a joined result out.

No I/O here and none under the lock: the runner (``runner.py``) stores, sends
and fetches, then feeds decoded records to :meth:`Call.receive`, which says
what to do next (store newly planned chunks, send the reduce task, clean up).
Tested without Redis (tests/test_call.py).
"""

from __future__ import annotations

import enum
import functools
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from .errors import CallTimeout, CancelledError, ChunkError
from .plane.keys import REDUCED
from .plane.records import Record, RunMeta, Status
from .planning import AdaptivePlanner, ChunkPlan, RangePlan


class CallState(enum.Enum):
    WAITING = "waiting"  # for a worker to appear
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"

    @property
    def ended(self) -> bool:
        return self not in (CallState.WAITING, CallState.RUNNING)


@dataclass(frozen=True)
class Snapshot:
    """What a display shows of a call at one moment."""

    label: str
    state: CallState
    chunks_done: int
    n_chunks: int
    items_done: int
    n_items: int
    busy: int
    started: float  # time.monotonic() at the start
    ended: float | None = None
    message: str = ""  # the error's first line, or what the call waits for
    known: bool = True  # the totals are final (False: an iterator still being read)
    hint: int | None = None  # chunks an open iterator expects to give (its length hint)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started


@dataclass(frozen=True)
class Reaction:
    """What the runner must do after :meth:`Call.receive` (outside the call's lock)."""

    store: range = range(0)  # newly planned chunks to store and queue
    reduce: bool = False  # every part is stored: send the reduce task
    ended: bool = False  # the call just ended: revoke what runs, delete its data


@dataclass
class _Parts:
    """The results that arrived, in arrival order too."""

    values: dict[int, object] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    dropped: bool = False  # joined by value(): streaming is over

    def ready(self, yielded: int, ordered: bool) -> list[int]:
        """Chunks that arrived and were not yielded yet (after ``yielded`` of them)."""
        if ordered:
            ready: list[int] = []
            while (yielded + len(ready)) in self.values:
                ready.append(yielded + len(ready))
            return ready
        return self.order[yielded:]


class Call:
    """The state of one ``cmap`` call: its plan, the parts that arrived, how it ended.

    ``keep``: a ``reduce=`` call (parts stay on the plane; one value comes
    back). ``funcs`` (func, reducer) render remote tracebacks with local
    source lines.
    """

    def __init__(
        self,
        plan: ChunkPlan,
        planner: AdaptivePlanner | None = None,
        *,
        label: str = "cmap",
        keep: bool = False,
        timeout: float | None = None,
        funcs: tuple[object, ...] = (),
        state: CallState = CallState.RUNNING,
    ) -> None:
        self.id, self.label, self.plan, self._planner = uuid.uuid4().hex, label, plan, planner
        self.keep, self.funcs, self.timeout, self.state = keep, funcs, timeout, state
        self.error: BaseException | None = None
        self.started, self.ended = time.monotonic(), cast(float | None, None)
        self.runs: list[RunMeta | None] = [None] * len(plan)  # who ran each chunk, how long
        self.busy = self._items_done = self._chunks_done = 0
        self.streaming = False  # chunks still come from an iterator
        self.release = False  # streamed parts are dropped once yielded (iterator inputs)
        self.waiting_for = "waiting for a worker"  # what a WAITING call waits for
        self._parts, self._joined, self._released = _Parts(), False, False
        self._value: object = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._on_end: list[Callable[[Call], object]] = []
        self._settled = False  # ended, and the end's callbacks ran (data cleaned up)
        self._done = threading.Event()  # set with _settled: what result() waits on

    # -- facts ------------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return len(self.plan)

    @property
    def n_items(self) -> int:
        return self.plan.n_items

    @property
    def planned(self) -> bool:
        """Whether every chunk is planned (adaptive chunking adds some after its probes; an
        iterator's chunks are known once it is exhausted)."""
        return self._planner is None and not self.streaming

    def progress_text(self) -> str:
        if self.state is CallState.WAITING:
            return self.waiting_for
        return f"{self._chunks_done} of {self.n_chunks} chunks done"

    def snapshot(self) -> Snapshot:
        with self._lock:
            message = str(self.error).splitlines()[0] if str(self.error or "") else ""
            if self.state is CallState.WAITING:
                message = self.waiting_for
            return Snapshot(
                self.label, self.state, self._chunks_done, self.n_chunks, self._items_done,
                self.n_items, self.busy, self.started, self.ended, message, not self.streaming,
                getattr(self.plan, "hint", None) if self.streaming else None,
            )  # fmt: skip

    # -- transitions ------------------------------------------------------------------------------
    def begin(self, plan: ChunkPlan, planner: AdaptivePlanner | None) -> bool:
        """WAITING -> RUNNING with ``plan`` (workers appeared); False if it ended meanwhile."""
        with self._lock:
            if self.state is not CallState.WAITING:
                return False
            self.plan, self._planner, self.state = plan, planner, CallState.RUNNING
            self.runs = [None] * len(plan)
            return True

    def receive(self, records: list[Record], busy: int | None = None) -> Reaction:
        """Take the records of finished chunks; what the runner must do next."""
        store, reduce, ended = range(0), False, False
        with self._lock:
            if busy is not None:
                self.busy = busy
            for record in records:
                if self.state.ended:
                    break
                if record.status is Status.ERROR:
                    info = self.plan.info(record.index) if record.index != REDUCED else None
                    ended = self._end(
                        CallState.FAILED, ChunkError.build(record.failure, info, "", *self.funcs)
                    )
                elif record.index == REDUCED:
                    self._value, self._joined = record.value, True
                    ended = self._end(CallState.FINISHED)
                elif record.index not in self._parts.values:  # else a redelivered chunk's twin
                    planned = self._arrived(record)
                    store = store or planned
                    reduce, ended = self._complete()
            if records:
                self._changed.notify_all()
        if ended:
            self._notify_end()
        return Reaction(store, reduce, ended)

    def _arrived(self, record: Record) -> range:
        index = record.index
        self._parts.values[index] = record.value if record.status is Status.OK else None
        self._parts.order.append(index)
        if index >= len(self.runs):  # an iterator's chunks are known as they are read
            self.runs += [None] * (index + 1 - len(self.runs))
        self.runs[index] = record.meta
        self._items_done += self.plan.items(index)
        self._chunks_done += 1
        if self._planner is None or not isinstance(self.plan, RangePlan):
            return range(0)
        timed = [r.seconds / self.plan.items(i) for i, r in enumerate(self.runs) if r]
        sizes = self._planner.rest(self.plan.covered, statistics.median(timed))
        first = self.n_chunks
        self.plan, self._planner = self.plan.then(sizes), None
        self.runs += [None] * len(sizes)
        return range(first, self.n_chunks)

    def _complete(self) -> tuple[bool, bool]:
        """Every chunk arrived: (a reduce= call's reduction is due, the call ended)."""
        if self.state is not CallState.RUNNING or self._chunks_done < self.n_chunks:
            return False, False
        if not self.planned:
            return False, False
        return (True, False) if self.keep else (False, self._end(CallState.FINISHED))

    def stream_ended(self) -> Reaction:
        """The iterator is exhausted: every chunk is known; the call may be done already."""
        with self._lock:
            self.streaming = False
            reduce, ended = self._complete()
            self._changed.notify_all()
        if ended:
            self._notify_end()
        return Reaction(reduce=reduce, ended=ended)

    def fail(self, error: BaseException, state: CallState = CallState.FAILED) -> bool:
        """End the call with ``error`` unless it ended already; whether it did."""
        with self._lock:
            ended = self._end(state, error)
            self._changed.notify_all()
        if ended:
            self._notify_end()
        return ended

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        return self.fail(CancelledError(f"{reason} ({self.progress_text()})"), CallState.CANCELLED)

    def check_deadline(self, now: float) -> bool:
        """Time the call out if its deadline passed; whether that happened now."""
        if self.timeout is None or now < self.started + self.timeout or self.state.ended:
            return False
        return self.fail(
            CallTimeout(
                f"cmap did not finish within timeout={self.timeout} s ({self.progress_text()}); "
                "the call was cancelled"
            ),
            CallState.TIMED_OUT,
        )

    def _end(self, state: CallState, error: BaseException | None = None) -> bool:
        if self.state.ended:
            return False
        self.state, self.error, self.ended = state, error, time.monotonic()
        return True

    def on_end(self, callback: Callable[[Call], object]) -> None:
        """Call ``callback(call)`` once the call ends (at once if it has)."""
        with self._lock:
            if not self._settled:
                self._on_end.append(callback)
                return
        callback(self)

    def _notify_end(self) -> None:
        with self._lock:
            callbacks, self._on_end = self._on_end, []
        try:
            for callback in callbacks:
                callback(self)
        finally:
            with self._lock:
                self._settled = True
                self._changed.notify_all()
            self._done.set()

    # -- results ----------------------------------------------------------------------------------
    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s (None: no limit) for the call to end and its data to be
        cleaned up; whether it has. (In short slices, so that Ctrl-C gets through.)"""
        limit = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.2 if limit is None else min(0.2, limit - time.monotonic())):
            if limit is not None and time.monotonic() >= limit:
                return False
        return True

    def value(self) -> Any:
        """The joined result (joined once, then the parts are dropped); raises the call's error."""
        with self._lock:
            if self.error is not None:
                raise self.error
            if self.state is not CallState.FINISHED:
                raise RuntimeError(f"the call is {self.state.value}, not finished")
            if not self._joined and self._released:
                raise RuntimeError(
                    "as_completed() streamed this call's results and did not keep them (its "
                    "input is an iterator): use them as they come, or call result() instead"
                )
            if not self._joined:
                parts = [self._parts.values[i] for i in range(self.n_chunks)]
                self._parts = _Parts(dropped=True)
                self._value, self._joined = self.plan.join(parts), True
            return self._value

    def stream(self, ordered: bool, timeout: float | None) -> Iterator[tuple[int, Any]]:
        """``(chunk, result)`` as chunks arrive (``ordered``: in chunk order); CallTimeout
        when no chunk arrives for ``timeout`` s (None: wait as long as it takes)."""
        yielded = 0
        while yielded < self.n_chunks or not self.planned:
            with self._changed:
                _wait_for(
                    self._changed, functools.partial(self._any_ready, yielded, ordered), timeout
                )
                ready = self._parts.ready(yielded, ordered)
                if self.error is not None:  # raised once its work is revoked, as result() does
                    self._changed.wait_for(lambda: self._settled)
                    raise self.error
                if self._parts.dropped:
                    raise RuntimeError("result() already joined the parts: use its value")
                if not ready and yielded >= self.n_chunks and self.planned:
                    return  # an iterator input was exhausted after its last chunk came
                if not ready:
                    raise CallTimeout(f"no chunk finished within {timeout} s; the call runs on")
                batch = [(i, self._parts.values[i]) for i in ready]
                if self.release and ready:  # an iterator's results are not kept once streamed
                    self._released = True
                    for i in ready:
                        self._parts.values[i] = None
                    self._parts.dropped = yielded + len(ready) >= self.n_chunks and self.planned
            for item in batch:
                yielded += 1
                yield item

    def _any_ready(self, yielded: int, ordered: bool) -> bool:
        return bool(self._parts.ready(yielded, ordered)) or self._settled

    def __repr__(self) -> str:
        return f"<Call {self.id[:8]} {self.state.value}: {self.progress_text()}>"


def finished_call(value: object, label: str = "cmap") -> Call:
    """A call that ran nowhere (empty input) and has ``value``."""
    call = Call(RangePlan(((),), ()), label=label)
    call._value, call._joined = value, True
    call._end(CallState.FINISHED)
    call._settled = True
    call._done.set()
    return call


def _wait_for(
    condition: threading.Condition, ready: Callable[[], bool], timeout: float | None
) -> bool:
    """Wait (holding ``condition``) until ``ready()``, in short slices so that Ctrl-C gets
    through; whether it happened within ``timeout`` s (None: no limit)."""
    limit = None if timeout is None else time.monotonic() + timeout
    while not ready():
        left = 0.2 if limit is None else min(0.2, limit - time.monotonic())
        if left <= 0:
            return False
        condition.wait(left)
    return True
