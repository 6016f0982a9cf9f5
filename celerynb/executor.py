"""``Executor``: a ``concurrent.futures.Executor`` whose work runs as calls on the cluster.

``submit(fn, *args, **kwargs)`` is a one-item call and ``map(fn, *iterables)``
one call over an iterator of argument tuples (read as the workers need them,
``max_ahead`` chunks of ``chunksize`` items at most ahead), both through
``cmap_async``: the same shipping, signing, output relay, errors, cancellation
and elasticity as ``cmap``. ``shutdown()`` never stops the cluster.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar, Unpack

from .api import cmap_async
from .applying import Apply, Failed, Item
from .cluster import Cluster
from .errors import ChunkError, ChunkInfo
from .future import MapFuture
from .options import CallKwargs, CallOptions

P = ParamSpec("P")
T = TypeVar("T")

#: options that shape data or results, which an Executor's calls fix themselves
FIXED = ("args", "kwargs", "chunks", "chunk_size", "overlap", "reduce", "name", "keep")
FIXED_TOO = ("replace", "to", "storage_options")


class ExecutorFuture(concurrent.futures.Future[Any]):
    """The future of one ``submit``: pending until its call ends.

    ``cancel()`` stops the call wherever it is, queued or running on a worker
    (celerynb can stop running work), and is False only once it has ended.
    """

    def __init__(self, call: MapFuture, settler: Settler) -> None:
        super().__init__()
        self.call = call  # the one-item call that runs it (stats(), workers, label)
        call.add_done_callback(lambda _: settler.put(self._settle))

    def _settle(self) -> None:
        if self.call.cancelled():  # however it was (shutdown, the cluster closed): cancelled
            super().cancel()
        if not self.set_running_or_notify_cancel():
            return
        try:
            value = self.call.result()[0]
        except BaseException as exc:
            self.set_exception(exc)
        else:
            self.set_result(value)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self.call.cancel("the future was cancelled")
        return True

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<ExecutorFuture {self.call.label}: {state}>"


class Settler:
    """A thread that resolves an Executor's futures (and so runs their done callbacks, which
    may start more work) off the cluster's supervisor; it ends when idle, starts on demand."""

    IDLE_S = 2.0  # seconds without work before the thread ends

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, job: Callable[[], object]) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-executor", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            job()


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on a celerynb cluster.

    ``cluster``: default the current one (started on first use). ``options``:
    those of ``cmap`` that concern running (``progress`` (default False here),
    ``timeout``, ``retries``, ``chunk_timeout``, ``attempts``, ``output``,
    ``output_lines``, ``output_bytes``, ``log_level``, ``max_ahead``), for every
    call it makes. Works with ``concurrent.futures.wait`` / ``as_completed``,
    ``asyncio.wrap_future`` and ``with Executor() as ex:``.
    """

    def __init__(self, cluster: Cluster | None = None, **options: Unpack[CallKwargs]) -> None:
        options.setdefault("progress", False)
        fixed = sorted(set(options) & {*FIXED, *FIXED_TOO})
        if fixed:
            raise TypeError(
                f"Executor() does not take {', '.join(fixed)}: submit() and map() shape their "
                "calls themselves (use cmap for chunked data, reduce= or to=)"
            )
        CallOptions.make(**options)  # a bad option names itself now, not at the first call
        self.cluster = cluster
        self.options = options
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False
        self._settler = Settler()

    def _start(
        self,
        shipped: Apply,
        data: Any,
        *,
        wrap: Callable[[MapFuture], Any] | None = None,
        max_ahead: int | None = None,
    ) -> Any:
        """Start a call of ``shipped`` over ``data``; its future (``wrap``ped), followed
        until it ends."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        options: dict[str, Any] = dict(self.options)
        if max_ahead is not None:
            options["max_ahead"] = max_ahead
        # not under the lock: the supervisor's thread takes it when a call ends (_ended)
        call = cmap_async(shipped, data, cluster=self.cluster, **options)
        future = wrap(call) if wrap is not None else call
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._ended)  # at once if it has ended already
        return future

    def _ended(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; its future."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        item: Item = (args, kwargs)
        future: concurrent.futures.Future[T] = self._start(
            Apply(fn), [item], wrap=lambda call: ExecutorFuture(call, self._settler)
        )
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn(*items)`` for the items of ``iterables`` taken together (as ``zip``), on the
        workers ``chunksize`` items at a time; the results in order, as they come.

        The iterables are read as the workers need them (``max_ahead`` chunks ahead);
        ``timeout`` s counts from this call: past it, the next result raises
        ``TimeoutError``. An item's exception is raised when its result is reached.
        Leaving the loop early cancels what is left. ``buffersize`` (Python 3.14's
        bound on read-ahead) is accepted as ``max_ahead`` for this map.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, got {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = _chunks(zip(*iterables, strict=False), chunksize)
        first = next(chunks, None)
        if first is None:
            return iter(())
        call: MapFuture = self._start(
            Apply(fn, each=True), itertools.chain([first], chunks), max_ahead=buffersize
        )
        return _results(call, fn, chunksize, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work from now on; ``cancel_futures``: cancel the calls that have not ended
        (queued or running); ``wait``: wait for the others. The cluster keeps running."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            concurrent.futures.wait(pending)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._pending)} calls running"
        on = repr(self.cluster) if self.cluster is not None else "the current cluster"
        return f"<celerynb.Executor on {on}: {state}>"


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[Item]]:
    while True:
        chunk: list[Item] = [(args, {}) for args in itertools.islice(items, size)]
        if not chunk:
            return
        yield chunk


_END = object()


def _results(
    call: MapFuture, fn: Callable[..., Any], chunksize: int, deadline: float | None
) -> Iterator[Any]:
    """The items' results in order; each wait limited by the map's deadline. A thread
    follows the call's chunks in order (its own waits cannot shrink with the deadline)."""
    arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def follow() -> None:
        try:
            for chunk in call.as_completed(ordered=True):
                arrived.put(chunk)
        except BaseException as exc:
            arrived.put(exc)
        arrived.put(_END)

    threading.Thread(target=follow, name=f"celerynb-{call.label}", daemon=True).start()
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                got = arrived.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"map() did not finish within its timeout ({call!r})") from None
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            index, values = got
            for offset, value in enumerate(values):
                if isinstance(value, Failed):
                    raise _item_error(call, fn, index, index * chunksize + offset, value)
                yield value
    finally:
        call.cancel("the map's results were left")  # False (a no-op) once it has ended


def _item_error(
    call: MapFuture, fn: Callable[..., Any], chunk: int, position: int, failed: Failed
) -> ChunkError:
    """The error of one item, as cmap raises a chunk's: also an instance of its type."""
    workers = call.workers
    worker = workers[chunk] if chunk < len(workers) else None
    failure = replace(failed.failure, worker=worker) if worker else failed.failure
    return ChunkError.build(failure, ChunkInfo(chunk, -1, position, position + 1), "", fn)
