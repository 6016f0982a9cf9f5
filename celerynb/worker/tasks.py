"""The tasks a worker runs: one draining task for every call's chunks, one reduce task."""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from .. import celery_compat, dispatch, running
from ..errors import RemoteFailure, StoreFull, failure_of
from ..options import SlotOptions
from ..plane import INLINE, DataPlane, codec
from ..plane.codec import Job
from ..plane.keys import REDUCED, CallKeys
from ..plane.records import OutputBatch, Record, RunMeta, Status
from ..plane.scripts import ABANDONED, OPEN, Report, Taken
from ..plane.store import StoreRefused
from ..settings import REDUCE, RUN_CHUNKS, Tuning
from . import app, context, leaving
from .capture import Capture

OPEN_WAIT = 0.2  # seconds a draining task waits at a time for an open call's next chunks
T = TypeVar("T")
FULL_WAIT = 10.0  # seconds a store that refuses writes (at its maxmemory) is waited out


@functools.cache
def tuning() -> Tuning:
    """The worker's limits, read from its environment at its first task (not at import)."""
    return Tuning.from_env()


def compute(job: Job, chunk: object, opts: SlotOptions) -> object:
    """``func`` on ``chunk`` (several inputs unpacked); re-run ``retries`` times if it raises."""
    inputs = chunk if opts.zipped else (chunk,)
    for attempt in range(opts.retries + 1):
        try:
            return job.func(*inputs, *job.args, **job.kwargs)  # type: ignore[misc]
        except SoftTimeLimitExceeded:
            raise
        except SystemExit as exc:
            if celery_compat.terminating():  # the pool is stopping this process: let it go
                raise
            # sys.exit() in func: report it as the chunk's error, keep the process
            raise RuntimeError(f"func raised SystemExit({exc.code!r}) (sys.exit)") from exc
        except Exception as exc:
            if attempt == opts.retries:
                if opts.retries:
                    exc.add_note(f"(failed {opts.retries + 1} times: retries={opts.retries})")
                raise
    raise AssertionError("unreachable")


def _died(tries: int, job_found: bool, worker: str) -> RemoteFailure:
    """The failure of a chunk whose worker process kept dying (or whose job is gone)."""
    return RemoteFailure(
        "WorkerLostError",
        f"the worker process running this chunk died {tries - 1} times "
        "(killed by a signal, out of memory, or a crash in native code); giving up on it"
        if job_found
        else "the call's function is gone from the store (expired or deleted)",
        "",
        None,
        worker,
    )


def _timeout_error(exc: BaseException, opts: SlotOptions) -> BaseException:
    if isinstance(exc, SoftTimeLimitExceeded):
        return TimeoutError(
            f"the chunk ran longer than chunk_timeout={opts.chunk_timeout} s"
        ).with_traceback(exc.__traceback__)
    return exc


class Revoked(Exception):
    """The draining task was revoked (its call cancelled or ended) while it ran a chunk."""


def _meta(worker: str, started: float, begun: float, tries: int, bytes_in: int = 0) -> RunMeta:
    seconds = time.perf_counter() - started
    return RunMeta(worker, os.getpid(), seconds, begun, begun + seconds, tries, bytes_in)


def _capture(
    plane: DataPlane, keys: CallKeys, index: int, opts: SlotOptions, worker: str
) -> Capture:
    """The capture of chunk ``index``'s output (sent on, or dropped with ``output=False``)."""
    if not opts.output:
        return Capture(lambda batch: False, index, worker, opts.log_level)

    def sink(batch: OutputBatch) -> bool:
        return plane.push_output(keys, batch, opts.output_bytes)

    return Capture(sink, index, worker, opts.log_level)


def _run_one(
    plane: DataPlane, keys: CallKeys, got: Taken, opts: SlotOptions, worker: str
) -> Report:
    """Run the chunk ``got`` took; its report for the next round trip."""
    assert got.index is not None
    index, started, begun, size = got.index, time.perf_counter(), time.time(), 0
    capture = _capture(plane, keys, index, opts, worker)
    try:
        if got.tries > opts.attempts or not got.job_found:
            died = _died(got.tries, got.job_found, worker)
            record = Record(
                index, Status.ERROR, died, meta=_meta(worker, started, begun, got.tries)
            )
        else:
            job = context.job(keys.call, got.job, worker)
            chunk, size = plane.load_chunk(keys, index, got.chunk)
            with capture, running.chunk(index):
                value = compute(job, chunk, opts)
            del chunk
            status = Status.STORED if opts.keep else Status.OK
            meta = _meta(worker, started, begun, got.tries, size)
            record = Record(index, status, value, meta=meta)
            del value
        blob, parked = plane.place(keys, record)
        if parked:  # kept apart before the record says so (the store may be full)
            _park(keys, index, parked)
    except SoftTimeLimitExceeded as exc:
        # chunk_timeout, or a revoke's soft stop (dispatch.revoke): a revoked chunk is no
        # longer wanted, and its task ends quietly
        if not opts.chunk_timeout or not context.store.wanted(keys, index):
            raise Revoked from None
        failure = replace(failure_of(_timeout_error(exc, opts), worker), output=capture.tail())
        meta = _meta(worker, started, begun, got.tries, size)
        record = Record(index, Status.ERROR, failure, meta=meta)
        blob = codec.dumps(plane.secret, record)
    except Exception as exc:
        failure = replace(failure_of(_timeout_error(exc, opts), worker), output=capture.tail())
        meta = _meta(worker, started, begun, got.tries, size)
        record = Record(index, Status.ERROR, failure, meta=meta)
        blob = codec.dumps(plane.secret, record)
    return Report(index, blob)


def _full_wait(what: str, step: Callable[[], T]) -> T:
    """``step()``, again while the store refuses writes (at its maxmemory), for up to
    ``FULL_WAIT`` s; then StoreFull naming ``what``."""
    deadline, pause = time.monotonic() + FULL_WAIT, 0.05
    while True:
        try:
            return step()
        except StoreRefused as exc:
            if time.monotonic() >= deadline:
                raise StoreFull(
                    f"the store refused {what} for {FULL_WAIT:.0f} s: it is at its maxmemory "
                    f"({exc}); give it a bigger maxmemory, or pass a smaller chunk_size= or "
                    "max_ahead="
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def _park(keys: CallKeys, index: int, value: bytes) -> None:
    """Keep a result apart for the driver, waiting out a full store for a while."""
    what = f"this chunk's result ({len(value) / 2**20:.1f} MiB)"
    _full_wait(what, functools.partial(context.store.park, keys, index, value))


def _send(task: Task, call: str, slot: str, opts: SlotOptions, spare: bool = False) -> None:
    """A draining message for ``slot`` on the queue this one came from."""
    task.app.send_task(
        RUN_CHUNKS,
        args=(call, slot, opts),
        kwargs={"spare": spare},
        task_id=CallKeys(call).slot_task(slot),
        queue=celery_compat.delivery_queue(task.request, app.conf.task_default_queue),
        ignore_result=True,
        argsrepr=dispatch.argsrepr(call, slot, opts),
        kwargsrepr="{}",
    )


def _summary(opts: SlotOptions, call: str, chunks: list[int]) -> str:
    """The task's result as monitoring shows it: which chunks of which call it ran."""
    spans: list[str] = []
    for n in sorted(chunks):
        if spans and spans[-1].split("-")[-1] == str(n - 1):
            spans[-1] = f"{spans[-1].split('-')[0]}-{n}"
        else:
            spans.append(str(n))
    return f"{opts.label} {call[:8]}: chunks {','.join(spans) or 'none'}"


@app.task(name=RUN_CHUNKS, bind=True)
def run_chunks(self: Task, call: str, slot: str, opts: SlotOptions, spare: bool = False) -> str:
    """Run the call's pending chunks one after another; return which (for monitoring).

    One round trip per chunk reports the last chunk and takes the next (see
    ``plane.scripts``). After ``Tuning.drain_seconds``, or when this worker begins a
    warm shutdown, the slot goes on in a fresh message, so other calls (and
    workers) get their turn and no message stays unacked for long. A ``spare``
    message waits in the queue for a worker that joins: once it takes a
    chunk, it queues the next spare.
    """
    ctx, keys, worker = context, CallKeys(call), self.request.hostname or ""
    plane, slot = ctx.plane(opts.shm), str(slot)
    stop = time.monotonic() + tuning().drain_seconds
    report: Report | None = None
    ran: list[int] = []
    try:
        while True:
            taken = len(ran)
            take = not (opts.one and taken) and time.monotonic() < stop and not leaving()
            step = functools.partial(
                ctx.store.take,
                keys,
                slot,
                report,
                take=take,
                have_job=call in ctx.jobs,
                inline_max=INLINE,
                worker=ctx.owner(worker),
                watch=opts.watch,
            )
            got = _full_wait("this chunk's record", step)
            if report is not None and plane.shared:  # its chunk's file (its result's, if unwanted)
                plane.drop(keys, [report.index], results=not got.accepted)
            report = None
            if got.pending == ABANDONED:  # its notebook is gone: nobody wants the results
                ctx.store.reap(keys)
                return _summary(opts, call, ran)
            if got.index is None and opts.keep and _fold(keys, opts, worker):
                continue  # between an iterator's chunks: a partial reduction it asked for
            if got.index is None and got.pending == OPEN and take:  # more chunks may come
                # (the list's last chunk number rotates to its head: nothing is taken)
                ctx.store.wait_for_chunks(keys, OPEN_WAIT)
                continue
            if got.index is None:
                if got.pending and not opts.one:  # time is up (or leaving), chunks are left
                    _send(self, call, slot, opts)
                return _summary(opts, call, ran)
            if spare and not taken and got.pending > 0:  # the spare was taken: queue the next
                _send(self, call, f"x{secrets.token_hex(4)}", opts, spare=True)
            ran.append(got.index)
            try:
                report = _run_one(plane, keys, got, opts, worker)
            except Revoked:
                return _summary(opts, call, ran)
    except SoftTimeLimitExceeded:  # a revoke's soft stop between chunks (no chunk_timeout)
        if opts.chunk_timeout:
            raise
        return _summary(opts, call, ran)


def reduce_into(call: str, parts: list[int], shm: bool, out: int, worker: str) -> None:
    """Apply the call's reducer to its stored ``parts`` (in order) and push the record of
    the value: the call's result (``out`` REDUCED), or a partial one kept as part ``out``
    for a later reduction (an iterator's parts are reduced as they come)."""
    ctx, keys = context, CallKeys(call)
    plane, started = ctx.plane(shm), time.perf_counter()
    try:
        job = ctx.job(call, ctx.store.job_blob(keys), worker)
        values = plane.load_parts(keys, parts)
    except LookupError:  # cancelled meanwhile
        return
    begun = time.time()
    status = Status.OK if out == REDUCED else Status.STORED
    try:
        assert job.reduce is not None
        value = job.reduce(values)
        record = Record(out, status, value, meta=_meta(worker, started, begun, 1))
    except SoftTimeLimitExceeded:  # revoked (a reduce task has no time limit): cancelled
        return
    except Exception as exc:
        failure = failure_of(exc, worker)
        record = Record(out, Status.ERROR, failure, meta=_meta(worker, started, begun, 1))
    del values
    plane.drop(keys, parts, results=True)
    ctx.store.drop_results(keys, parts)
    blob, parked = plane.place(keys, record)
    ctx.store.push_record(keys, out, blob, parked)


def _fold(keys: CallKeys, opts: SlotOptions, worker: str) -> bool:
    """Run a partial reduction the driver asked for, if there is one; whether there was."""
    fold = context.store.pop_fold(keys)
    if fold is None:
        return False
    reduce_into(keys.call, list(fold.parts), opts.shm, fold.out, worker)
    return True


@app.task(name=REDUCE, bind=True, ignore_result=True)
def reduce_parts(
    self: Task, call: str, parts: list[int], shm: bool = False, out: int = REDUCED
) -> None:
    """The reduce task: see :func:`reduce_into`."""
    reduce_into(call, parts, shm, out, self.request.hostname or "")
