"""``cmap`` and ``cmap_async``: split, submit, wait, join."""

from __future__ import annotations

import contextlib
import html
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle
import redis
from celery import chord

from . import serialization, shipping, store
from .app import REDUCE, RUN_CHUNK, RUN_CHUNKS
from .chunking import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK_BYTES,
    GroupApply,
    GroupPlan,
    Plan,
    check_inputs,
    is_groupby,
    join,
    kind_of,
    n_chunks_for,
    nbytes,
)
from .cluster import Cluster, current
from .errors import CancelledError, ChunkError, ClusterError, RemoteFailure
from .progress import Display, NoDisplay, make_display, mimebundle
from .store import ERROR, OK, REDUCED, REF, STORED, CallKeys

TICK = 0.08  # seconds a poll waits for news before the display is refreshed
TARGET_CHUNK_SECONDS = 0.05  # adaptive chunking plans no chunk shorter than this
ADAPT_MIN_ITEMS_PER_WORKER = 64  # smaller inputs use the fixed default
PROBES_PER_WORKER = 32  # a probe chunk holds 1/(32 x workers) of the items
_PUSH_BYTES = 32 * 2**20  # chunk bytes buffered before a pipeline is flushed
_EARLY_BYTES = 8 * 2**20  # calls with more data start before all of it is stored
OPEN_SECONDS = 10  # workers stop waiting for an open call's chunks when its driver is gone


def _batch(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """kombu's batched publishing (one round trip per 1000 messages) where available."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=1000) if batch is not None else contextlib.nullcontext()


def _describe_unpicklable(func: Callable[..., Any], exc: Exception) -> str:
    """Name the closure variables, defaults or globals of ``func`` that do not pickle."""
    code = getattr(func, "__code__", None)
    suspects: list[tuple[str, Any]] = []
    if code is not None:
        cells = getattr(func, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                suspects.append((f"closure variable {name!r}", cell.cell_contents))
            except ValueError:
                continue
        globs = getattr(func, "__globals__", {})
        suspects += [(f"global {n!r}", globs[n]) for n in code.co_names if n in globs]
    for i, default in enumerate(getattr(func, "__defaults__", None) or ()):
        suspects.append((f"default argument #{i}", default))
    bad = []
    for what, value in suspects:
        try:
            cloudpickle.dumps(value)
        except Exception:
            bad.append(f"{what} (a {type(value).__name__})")
    culprit = ", ".join(bad) if bad else "an object it refers to"
    return (
        f"func cannot be pickled to send it to the workers: {culprit} cannot be pickled "
        f"({type(exc).__name__}: {exc}). Create such objects inside func, or pass "
        "what they hold as data."
    )


def _pickle_job(
    func: Callable[..., Any],
    reduce: Callable[..., Any] | None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
) -> bytes:
    for name, value in (("func", func), ("reduce", reduce)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    try:
        job = (func, reduce, args, kwargs or {})
        blob = shipping.dumps(job, roots=(func, reduce, *args, *(kwargs or {}).values()))
        return blob
    except Exception as exc:
        for name, extra in (("args", args), ("kwargs", kwargs)):
            try:
                cloudpickle.dumps(extra)
            except Exception:
                raise TypeError(
                    f"{name}= cannot be pickled to send it to the workers "
                    f"({type(exc).__name__}: {exc}); pass picklable values"
                ) from exc
        try:
            cloudpickle.dumps(func)
            culprit: Callable[..., Any] = reduce  # type: ignore[assignment]
        except Exception:
            culprit = func
        # name what func itself refers to, not the groupby wrapper around it
        message = _describe_unpicklable(getattr(culprit, "func", culprit), exc)
        if culprit is reduce:
            message = message.replace("func cannot", "reduce cannot", 1)
        raise TypeError(message) from exc


class MapFuture:
    """The handle of a running ``cmap_async`` call.

    ``result(timeout)`` waits and returns the joined result (or raises the
    chunk's error); ``done()``, ``cancel()``; ``workers`` says which worker
    ran each chunk.
    """

    def __init__(
        self,
        cluster: Cluster | None,
        plan: Plan | GroupPlan | None,
        reduce: Callable[..., Any] | None,
        display: Display,
        timeout: float | None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.func: Callable[..., Any] | None = None
        self.label = "cmap"
        self.plan = plan
        self.reduce = reduce
        self.call = uuid.uuid4().hex
        self.keys = CallKeys(self.call)
        self.n_chunks = len(plan) if plan is not None else 0
        self.n_items = len(plan.data) if plan is not None else 0
        self.started = time.monotonic()
        self.deadline = self.started + timeout if timeout is not None else None
        self.timeout = timeout
        self.options: dict[str, Any] = options or {"attempts": 3}
        self.state = "pending"
        self.workers: list[str | None] = [None] * self.n_chunks
        self.chunk_seconds: list[float | None] = [None] * self.n_chunks
        self._parts: dict[int, Any] = {}
        self._order: list[int] = []  # chunk numbers in order of arrival
        self._items_done = 0
        self._busy = 0
        self._value: Any = None
        self._error: BaseException | None = None
        self._display = display
        self._lock = threading.RLock()
        self._unreachable_since: float | None = None
        self._group = store.group_id(self.call)
        self._event = threading.Event()
        self._arrived = threading.Condition(self._lock)  # a part arrived, or the call ended
        self._joined = reduce is not None  # map calls join their parts on first result()
        self._dropped = False
        self._planned = True  # False while adaptive chunking waits for its probes
        self._opened = False  # the call's "open" key is set (see _flush)
        self._size = 0  # bytes of the inputs
        self._generation = cluster.generation if cluster is not None else 0
        self._slots = 0  # draining tasks sent so far (their slot numbers)
        # an embedded cluster passes map calls' data through shared memory
        self._shm = cluster.shm if cluster is not None and reduce is None else None

    # -- submission -----------------------------------------------------------
    def _task_id(self, index: int) -> str:
        return store.task_id(self.call, index)

    def _store_chunks(self, indices: range, job: bytes = b"", publish: bool = False) -> None:
        """Serialize and store chunks ``indices`` (and the ``job``), in pipelined batches.

        Map calls also queue the chunk numbers for the draining tasks (sent
        with ``publish`` once the first batch is stored: they start while the
        rest is stored, the call being open till then); with a shared-memory
        store the chunk goes into a file and its key only marks it live.
        """
        assert self.cluster is not None and self.plan is not None
        plan, secret, shm = self.plan, self.cluster.settings.secret, self._shm
        pipe = self.cluster.redis.pipeline(transaction=False)
        if job:
            pipe.set(self.keys.func, job, ex=store.TTL)
        buffered, queued = 0, []
        # big map calls: the workers start on the first chunks while the rest is stored
        big_call = self.reduce is None and self._size >= _EARLY_BYTES
        early, batch = (self.cluster.n_workers, 2**20) if big_call else (0, _PUSH_BYTES)
        for n, i in enumerate(indices, 1):
            what = plan.info(i).describe()
            try:
                # arrays and frames of some size go through shm; small data inline
                big = self._size * plan.items(i) >= store.INLINE * self.n_items
                size = None
                if shm is not None and big:
                    size = shm.put_if_room(self.keys.chunk_file(i), plan.take(i))
                blob = b"" if size is not None else serialization.dumps(secret, plan.take(i))
                buffered += size or 0
            except Exception as exc:
                self._cleanup()
                if isinstance(exc, OSError):
                    raise
                raise TypeError(
                    f"{what} of the data cannot be pickled "
                    f"({type(exc).__name__}: {exc}); pass data made of picklable objects"
                ) from exc
            try:
                store.check_size(blob, what, "pass more chunks (chunks=...)")
            except store.PayloadTooLarge:
                self._cleanup()
                raise
            pipe.set(self.keys.chunk(i), blob, ex=store.TTL)
            queued.append(i)
            buffered += len(blob)
            del blob
            if n < len(indices) and (buffered > batch or n == early):
                self._flush(pipe, queued)
                buffered, queued = 0, []
                if publish:
                    self._publish(len(indices))
                    publish = False
        self._flush(pipe, queued, last=True)
        if publish:
            self._publish(len(indices))

    def _flush(self, pipe: Any, queued: list[int], last: bool = False) -> None:
        if self.reduce is None:
            if queued:
                pipe.rpush(self.keys.pending, *queued)
                pipe.expire(self.keys.pending, store.TTL)
            # open: more chunks come (the rest of this batch, or, while adaptive
            # chunking's probes run, the chunks planned from their times)
            if not last or not self._planned:
                pipe.set(self.keys.open, 1, ex=OPEN_SECONDS)
                self._opened = True
            elif self._opened:  # all queued: close the call
                pipe.unlink(self.keys.open)
                self._opened = False
        pipe.execute()

    def _plan_rest(self) -> None:
        """Adaptive chunking: size the chunks after the probes from their measured time."""
        assert self.cluster is not None and isinstance(self.plan, Plan)
        timed = [
            seconds / self.plan.items(i)
            for i, seconds in enumerate(self.chunk_seconds)
            if seconds is not None
        ]
        per_item = max(statistics.median(timed), 1e-9)
        workers, left = self.cluster.n_workers, self.n_items - self.plan.covered
        # guided schedule: each chunk is a share of what is left, so chunks shrink
        # towards the end and a slow tail is spread over all workers; no chunk is
        # shorter than TARGET_CHUNK_SECONDS (per-chunk overhead) unless that would
        # leave a worker idle, and none holds more than MAX_CHUNK_BYTES (nor, for big
        # data, more than the fixed rule's chunks: storing overlaps with running)
        lowest = math.ceil(TARGET_CHUNK_SECONDS / per_item)
        highest = max(1, math.ceil(left / workers))
        if self._size:
            highest = min(highest, max(1, self.n_items * MAX_CHUNK_BYTES // self._size))
        if self._size >= _EARLY_BYTES:  # big data: chunks small enough to pipeline the copies
            highest = min(highest, math.ceil(self.n_items / (CHUNKS_PER_WORKER * workers)))
        sizes = []
        while left > 0:
            size = min(max(math.ceil(left / (CHUNKS_PER_WORKER * workers)), lowest), highest, left)
            if left - size < lowest // 2:  # no crumb of a chunk at the end
                size = min(left, highest)
            sizes.append(size)
            left -= size
        first = self.n_chunks
        self.plan = self.plan.then(sizes)
        self.n_chunks = len(self.plan)
        self.workers += [None] * (self.n_chunks - first)
        self.chunk_seconds += [None] * (self.n_chunks - first)
        self._planned = True
        # the probes' draining tasks wait for these while the call is open
        self._store_chunks(range(first, self.n_chunks))

    def _submit(self, job: bytes) -> None:
        assert self.cluster is not None and self.plan is not None
        cluster, plan, secret = self.cluster, self.plan, self.cluster.settings.secret
        store.check_size(job, "func (with everything it refers to)", "pass big objects as data")
        signed = serialization.sign(secret, shipping.pack_job(job))
        self._store_chunks(range(len(plan)), signed, publish=self.reduce is None)
        app, queue = cluster.app, cluster.settings.queue
        if self.reduce is not None:
            header = [
                app.signature(RUN_CHUNK, args=(self.call, i, {**self.options, "chord": True})).set(
                    task_id=self._task_id(i), queue=queue, **self._limits()
                )
                for i in range(len(plan))
            ]
            callback = app.signature(REDUCE, args=(self.call,)).set(queue=queue, ignore_result=True)
            chord(header, callback, app=app).set(task_id=self._group).apply_async(
                task_id=self._task_id(REDUCED)
            )
        self.state = "running"

    def _publish(self, n_chunks: int, held: Iterable[int] = ()) -> None:
        """Send draining tasks for ``n_chunks`` newly queued chunks, in one batch.

        As many tasks as the workers have processes (one per chunk with
        ``chunk_timeout``, a per-task limit), each under a new slot number,
        plus the slots in ``held`` again (they resume the chunk they held).
        """
        assert self.cluster is not None
        one = bool(self.options.get("chunk_timeout"))
        fresh = n_chunks if one else min(n_chunks, self.cluster.n_workers)
        slots = [*held, *range(self._slots, self._slots + fresh)]
        self._slots += fresh
        app, queue = self.cluster.app, self.cluster.settings.queue
        opts = {**self.options, "shm": self._shm is not None, "one": one}
        with app.producer_or_acquire() as producer, _batch(producer):
            for slot in slots:
                app.send_task(
                    RUN_CHUNKS,
                    args=(self.call, slot, opts),
                    task_id=store.slot_task_id(self.call, slot),
                    queue=queue,
                    ignore_result=True,
                    producer=producer,
                    argsrepr=f"(call={self.call!r}, slot={slot})",  # not Celery's saferepr
                    kwargsrepr="{}",
                    **self._limits(),
                )

    def _limits(self) -> dict[str, float]:
        timeout = self.options.get("chunk_timeout")
        return {"soft_time_limit": timeout, "time_limit": timeout + 10} if timeout else {}

    # -- polling --------------------------------------------------------------
    def _start_poller(self) -> None:
        self._thread = threading.Thread(
            target=self._poll_loop, name=f"celerynb-poll-{self.call[:8]}", daemon=True
        )
        self._thread.start()

    def _poll_loop(self) -> None:
        """The one polling loop of a call: runs in its own thread until the call ends."""
        try:
            while self.state == "running":
                if self.cluster is not None and self.cluster.closed:
                    self.cancel(reason="the cluster was closed")
                    break
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    with self._lock:
                        if self.state == "running":
                            self._fail(
                                TimeoutError(
                                    f"cmap did not finish within timeout={self.timeout} s "
                                    f"({self._progress_text()}); the call was cancelled"
                                ),
                                "timed out",
                            )
                    break
                self._poll(TICK)
                self._check_worker()
        except BaseException as exc:  # never leave a waiter hanging
            with self._lock:
                if self.state == "running":
                    self._fail(exc)
        finally:
            self._event.set()

    def _check_worker(self) -> None:
        """After the cluster replaced a dead worker, re-publish what it held."""
        assert self.cluster is not None
        self.cluster.ensure_worker()
        if self.cluster.generation == self._generation:
            return
        self._generation = self.cluster.generation
        with self._lock:
            if self.state != "running":
                return
            if self.reduce is not None:
                self._fail(
                    ClusterError(
                        "the worker process died and was restarted; a reduce= call cannot "
                        "resume its chord: run it again"
                    )
                )
                return
            held = [int(s) for s in self.cluster.redis.hkeys(self.keys.slots)]
            self._publish(self.n_chunks - len(self._parts), held)

    def _poll(self, block: float) -> None:
        """Wait up to ``block`` s for records, take all there are, refresh the display."""
        assert self.cluster is not None
        pipe = self.cluster.redis.pipeline(transaction=False)
        if not self._planned:  # keep the call open for the probes' draining tasks
            pipe.expire(self.keys.open, OPEN_SECONDS)
        pipe.blpop([self.keys.done], timeout=block)
        pipe.lpop(self.keys.done, 1000)
        pipe.hlen(self.keys.running)
        try:
            first, rest, busy = pipe.execute()[-3:]
        except redis.ConnectionError as exc:
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > self.cluster.broker_timeout:
                with self._lock:
                    self._fail(
                        ClusterError(
                            f"the broker / result store has been unreachable for "
                            f"{self.cluster.broker_timeout:.0f} s ({exc}); the call is abandoned"
                        )
                    )
            else:
                time.sleep(min(block, 0.5))
            return
        self._unreachable_since = None
        blobs: list[bytes] = ([first[1]] if first is not None else []) + (rest or [])
        secret = self.cluster.settings.secret
        records = [serialization.loads(secret, blob) for blob in blobs]
        del blobs
        with self._lock:
            self._busy = int(busy or 0)
            for index, status, value, meta in self._fetch(records):
                if self.state != "running":
                    break
                self._take(index, status, value, meta)
            if self.state == "running":
                self._display.update(len(self._parts), self._items_done, self._busy)

    def _fetch(self, records: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """The records, with the values kept apart (``REF``) fetched, one at a time."""
        assert self.cluster is not None
        refs = [
            r[0] for r in records if r[1] == REF and r[0] not in self._parts and not r[3].get("shm")
        ]
        blobs: dict[int, bytes | None] = {}
        if refs:  # big records wait in keys: one round trip for all
            pipe = self.cluster.redis.pipeline(transaction=False)
            for index in refs:
                pipe.get(self.keys.stored(index))
                pipe.unlink(self.keys.stored(index))
            blobs = dict(zip(refs, pipe.execute()[::2], strict=True))
        secret = self.cluster.settings.secret
        for record in records:
            index, status = record[0], record[1]
            if status != REF:
                yield record
            elif index in self._parts:
                continue
            elif record[3].get("shm") and self._shm is not None:
                name = self.keys.result_file(index)
                try:
                    value = self._shm.get(name)
                finally:
                    self._shm.delete([name])
                yield (index, OK, value, record[3])
            else:
                blob = blobs.pop(index)
                if blob is None:
                    raise ClusterError(f"the result of chunk {index} is gone from the store")
                yield serialization.loads(secret, blob)

    def _take(self, index: int, status: str, value: Any, meta: dict[str, Any]) -> None:
        assert self.plan is not None
        if status == ERROR:
            failure: RemoteFailure = value
            info = self.plan.info(index) if index != REDUCED else None
            self._fail(ChunkError.build(failure, info, "", self.func, self.reduce))
            return
        if index == REDUCED:
            self._value = value
            self._finish()
            return
        if index in self._parts:  # a redelivered chunk: keep the first result
            return
        self._parts[index] = value if status == OK else None
        self._order.append(index)
        self.workers[index] = meta.get("worker")
        self.chunk_seconds[index] = meta.get("seconds")
        self._items_done += self.plan.items(index)
        with self._arrived:  # an RLock: fine if already held
            self._arrived.notify_all()
        if not self._planned:
            self._plan_rest()
        if status == STORED or len(self._parts) < self.n_chunks:
            return
        self._finish()

    def _finish(self) -> None:
        self.state = "finished"
        with self._arrived:  # an RLock: fine if already held
            self._arrived.notify_all()
        self._display.update(self.n_chunks, self.n_items, 0)
        self._display.close("finished")
        self._cleanup()
        self._event.set()

    def _fail(self, error: BaseException, state: str = "failed") -> None:
        self._error = error
        self.state = state
        self._revoke()
        if self.reduce is not None and self.cluster is not None:
            # revoked or late chord members still write Celery's keys: sweep them later
            self.cluster.defer_delete(store.chord_keys(self.call, self.n_chunks))
        self._display.close(state, str(error).splitlines()[0] if str(error) else "")
        self._cleanup()
        self._event.set()
        with self._arrived:  # an RLock: fine if already held
            self._arrived.notify_all()

    def _revoke(self) -> None:
        """Stop the call's work: queued chunks become no-ops, running ones are terminated."""
        assert self.cluster is not None
        try:
            # Deleting the chunks first makes every task that has not claimed its
            # chunk yet a no-op; those that did are listed in the running hash.
            store.delete(self.cluster.redis, [self.keys.chunk(i) for i in range(self.n_chunks)])
            running = self.cluster.redis.hgetall(self.keys.running)
            if self.reduce is None:  # chunk number -> the slot of its draining task
                ids = [store.slot_task_id(self.call, int(s)) for s in set(running.values())]
            else:
                done = set(self._parts)
                ids = [self._task_id(i) for i in sorted(int(i) for i in running) if i not in done]
            if self.reduce is not None and not isinstance(self._error, ChunkError):
                ids.append(self._task_id(REDUCED))
            if ids:
                self.cluster.app.control.revoke(ids, terminate=True, signal="SIGTERM")
                # Celery records revoked tasks in the backend: remove those records later
                self.cluster.defer_delete([f"celery-task-meta-{t}" for t in ids])
        except Exception:  # the broker may be gone; the keys expire anyway
            pass

    def _cleanup(self) -> None:
        if self.cluster is None:
            return
        keys = self.keys.all(self.n_chunks)
        if self.reduce is not None:
            keys += store.chord_keys(self.call, self.n_chunks)
        with contextlib.suppress(redis.RedisError):
            store.delete(self.cluster.redis, keys)
        if self._shm is not None:
            self._shm.delete(self.keys.files(self.n_chunks))

    # -- the public face ------------------------------------------------------
    def done(self) -> bool:
        """Whether the call has finished, failed or been cancelled."""
        return self.state != "running"

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` s (default: no limit) and return the joined result.

        Raises the chunk's :class:`ChunkError`, :class:`CancelledError`, or
        ``TimeoutError`` (the call keeps running) when ``timeout`` passes.
        Interrupting the wait (Ctrl-C, the notebook's stop button) cancels the call.
        """
        limit = time.monotonic() + timeout if timeout is not None else None
        try:
            while not self._event.wait(
                0.2 if limit is None else max(0.0, min(0.2, limit - time.monotonic()))
            ):
                if limit is not None and time.monotonic() >= limit:
                    raise TimeoutError(
                        f"not finished after {timeout} s ({self._progress_text()}); it keeps "
                        "running: call .result() again or .cancel()"
                    )
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self._error is not None:
            raise self._error
        with self._lock:
            if not self._joined:  # join once, then drop the parts
                parts = [self._parts[i] for i in range(self.n_chunks)]
                self._parts = dict.fromkeys(range(self.n_chunks))
                self._dropped = True
                self._value = self.plan.join(parts) if self.plan is not None else join(parts)
                self._joined = True
        return self._value

    def as_completed(
        self, ordered: bool = False, timeout: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(chunk number, chunk result)`` as chunks finish.

        ``ordered=True`` yields in chunk order instead. Raises the call's error
        (e.g. :class:`ChunkError`) when it comes, and ``TimeoutError`` if no
        chunk arrives for ``timeout`` s (default: wait as long as it takes).
        Interrupting the loop (Ctrl-C) cancels the call.
        """
        if self.reduce is not None:
            raise TypeError("as_completed() streams chunk results; a reduce= call has only one")
        return self._stream(ordered, timeout)

    def _stream(self, ordered: bool, timeout: float | None) -> Iterator[tuple[int, Any]]:
        yielded = 0
        try:
            while yielded < self.n_chunks:
                with self._arrived:
                    ready = self._ready(yielded, ordered)
                    if not ready and self.state == "running":
                        self._arrived.wait(0.2 if timeout is None else timeout)
                        ready = self._ready(yielded, ordered)
                    if self._error is not None:
                        raise self._error
                    if self._dropped:
                        raise RuntimeError("result() already joined the parts: use its value")
                    if not ready and timeout is not None and self.state == "running":
                        raise TimeoutError(f"no chunk finished within {timeout} s")
                    batch = [(i, self._parts[i]) for i in ready]
                for item in batch:
                    yielded += 1
                    yield item
        except KeyboardInterrupt:
            self.cancel()
            raise

    def _ready(self, yielded: int, ordered: bool) -> list[int]:
        """Chunk numbers that arrived and were not yet yielded (after ``yielded`` of them)."""
        if ordered:
            ready: list[int] = []
            while yielded + len(ready) < self.n_chunks and (yielded + len(ready)) in self._parts:
                ready.append(yielded + len(ready))
            return ready
        return self._order[yielded:]

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        """Revoke the outstanding chunks and stop running ones; False if already done."""
        with self._lock:
            if self.state != "running":
                return False
            self._fail(CancelledError(f"{reason} ({self._progress_text()})"), "cancelled")
            return True

    def _progress_text(self) -> str:
        return f"{len(self._parts)} of {self.n_chunks} chunks done"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __repr__(self) -> str:
        return (
            f"<MapFuture {self.state}: {self._progress_text()}, "
            f"{self._items_done}/{self.n_items} items, {self.elapsed:.1f} s>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """In a notebook, a displayed handle is another live view of its progress widget."""
        bundle = mimebundle(self._display)
        if bundle is None:
            bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        return bundle

    def _repr_html_(self) -> str:
        colour = {"finished": "success", "running": "brand"}.get(self.state, "error")
        return (
            "<div style='color:var(--jp-ui-font-color1)'><b>MapFuture</b> "
            f"<span style='color:var(--jp-{colour}-color1)'>{html.escape(self.state)}</span>: "
            f"{html.escape(self._progress_text())}, {self._items_done}/{self.n_items} items, "
            f"{self.elapsed:.1f} s</div>"
        )


def _empty_result(
    func: Callable[..., Any],
    inputs: tuple[Any, ...],
    reduce: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Empty input is one empty chunk, run locally (or the empty input, if func fails)."""
    data = inputs[0]
    grouped = kind_of(data) == "groupby"
    try:
        value = data.apply(func, *args, **kwargs) if grouped else func(*inputs, *args, **kwargs)
    except Exception:
        data = data.obj if grouped else data
        value = data.iloc[:0].copy() if hasattr(data, "iloc") else data[:0]
    return reduce([value]) if reduce is not None else join([value])


def cmap_async(
    func: Callable[..., Any],
    data: Any,
    *more: Any,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    chunks: int | None = None,
    chunk_size: int | None = None,
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool | str | None = True,
    timeout: float | None = None,
    cluster: Cluster | None = None,
    retries: int = 0,
    chunk_timeout: float | None = None,
    attempts: int = 3,
) -> MapFuture:
    """Start ``cmap`` and return its :class:`MapFuture` at once (see :func:`cmap`)."""
    if not isinstance(args, tuple | list) or not isinstance(kwargs or {}, dict):
        raise TypeError("args= must be a tuple and kwargs= a dict of extra arguments for func")
    kwargs = dict(kwargs or {})
    # a groupby's workers run func per group: ship that wrapper, pickled once
    job = _pickle_job(
        GroupApply.of(data, func) if is_groupby(data) else func, reduce, tuple(args), kwargs
    )
    inputs = (data, *more)
    n_items = check_inputs(inputs)
    for name, value in (("timeout", timeout), ("chunk_timeout", chunk_timeout)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    for name, value, low in (("retries", retries, 0), ("attempts", attempts, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    options = {
        "attempts": attempts,
        "retries": retries,
        "chunk_timeout": chunk_timeout,
        "zip": len(inputs) > 1,
    }
    n_chunks_for(max(n_items, 1), 1, 0, chunks, chunk_size)  # argument errors before start-up
    if n_items == 0:
        future = MapFuture(None, None, reduce, NoDisplay(), timeout)
        future._value = _empty_result(func, inputs, reduce, tuple(args), kwargs)
        future._joined = True
        future.state = "finished"
        future._event.set()
        return future
    cluster = cluster or current()
    assert cluster is not None
    if cluster.closed:
        raise ClusterError(f"{cluster!r} is closed: start a new one or pass cluster=None")
    size = sum(nbytes(x) for x in inputs)
    workers = cluster.n_workers
    grouped = kind_of(data) == "groupby"
    adaptive = (
        chunks is None and chunk_size is None and reduce is None and not grouped
        and n_items >= ADAPT_MIN_ITEMS_PER_WORKER * workers
    )  # fmt: skip
    cluster.sweep()
    plan: Plan | GroupPlan
    if grouped:
        plan = GroupPlan.make(data, n_chunks_for(n_items, workers, size, chunks, chunk_size))
    elif adaptive:  # one probe chunk per worker first: see MapFuture._plan_rest
        probe = min(
            n_items // (PROBES_PER_WORKER * workers),
            max(1, n_items * MAX_CHUNK_BYTES // max(size, 1)),
        )
        plan = Plan.probe(inputs, workers, max(1, probe))
    else:
        plan = Plan.make(inputs, n_chunks_for(n_items, workers, size, chunks, chunk_size))
    future = MapFuture(cluster, plan, reduce, NoDisplay(), timeout, options)
    future.func = func
    future.label = f"cmap({getattr(func, '__name__', type(func).__name__)})"
    future._size = size
    future._planned = not adaptive
    future._display = make_display(progress, future)
    try:
        future._submit(job)
    except BaseException:
        future._fail(CancelledError("submission failed"), "failed")
        raise
    cluster.running.add(future)
    future._start_poller()
    return future


def cmap(
    func: Callable[..., Any],
    data: Any,
    *more: Any,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    chunks: int | None = None,
    chunk_size: int | None = None,
    reduce: Callable[[list[Any]], Any] | None = None,
    progress: bool | str | None = True,
    timeout: float | None = None,
    cluster: Cluster | None = None,
    retries: int = 0,
    chunk_timeout: float | None = None,
    attempts: int = 3,
) -> Any:
    """Run ``func(chunk)`` on Celery workers over chunks of ``data``; join in order.

    ``data``: a pandas DataFrame / Series (split by rows), an ndarray (axis 0)
    or a sized sequence (a list of paths too: the workers open the files).
    Further inputs (``*more``, equal length) are split alongside, like
    ``zip``: ``func(chunk_of_data, chunk_of_b, ...)``; ``args`` / ``kwargs``
    are extra arguments for every call, shipped once per call. ``chunks`` /
    ``chunk_size`` override the default chunking (4 chunks per worker,
    chunks of at most 64 MiB). ``reduce``, if given, runs on a worker over
    the list of chunk results (a Celery chord) and only its value comes back.
    ``progress``: True (default) shows progress, False hides it.
    ``timeout``: seconds for the whole call (default none), after which it is
    cancelled. ``cluster``: default the current one, started on first use.
    ``retries``: re-runs of a chunk whose func raised (default 0).
    ``chunk_timeout``: seconds one chunk may run (default none). ``attempts``:
    deliveries of a chunk whose worker process died (killed, out of memory)
    before the call fails (default 3). Interrupting the wait cancels the
    outstanding chunks.
    """
    return cmap_async(
        func,
        data,
        *more,
        args=args,
        kwargs=kwargs,
        chunks=chunks,
        chunk_size=chunk_size,
        reduce=reduce,
        progress=progress,
        timeout=timeout,
        cluster=cluster,
        retries=retries,
        chunk_timeout=chunk_timeout,
        attempts=attempts,
    ).result()
