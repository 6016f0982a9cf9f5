"""The Celery app that workers run, and the generic chunk and reduce tasks.

Start a worker with ``celerynb worker --broker URL`` or, with Celery's own
CLI, ``celery -A celerynb.worker worker`` and the ``CELERYNB_*`` variables set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import cloudpickle
import redis
from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded

from . import serialization, shipping, store
from ._proc import die_with_parent
from .app import ENV_SHM_DIR, REDUCE, RUN_CHUNK, RUN_CHUNKS, Settings, make_app
from .chunking import nbytes
from .errors import RemoteFailure
from .store import ERROR, OK, REDUCED, REF, STORED, CallKeys

if TYPE_CHECKING:
    from .shm import ShmStore

log = logging.getLogger(__name__)

try:
    settings: Settings | None = Settings.from_env()
    _config_error = ""
except ValueError as exc:
    settings, _config_error = None, str(exc)

app: Celery = make_app(settings) if settings else Celery("celerynb", set_as_current=False)

# a draining task hands its slot on to a fresh message after this long
DRAIN_SECONDS = float(os.environ.get("CELERYNB_DRAIN_SECONDS", "10"))
OPEN_WAIT = 0.01  # seconds a draining task waits at a time for an open call's next chunks

_client: redis.Redis | None = None
_shm_store: ShmStore | None = None
# call id -> (func, reducer, args, kwargs), the last few calls' jobs
_jobs: OrderedDict[
    str,
    tuple[Callable[..., Any], Callable[[list[Any]], Any] | None, tuple[Any, ...], dict[str, Any]],
] = OrderedDict()


@signals.worker_init.connect
def _check_settings(**_: Any) -> None:
    if settings is None:
        raise SystemExit(f"celerynb worker cannot start: {_config_error}")
    for name in ("numpy", "pandas"):  # preload before forking the pool
        with contextlib.suppress(ImportError):
            __import__(name)


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    global _client
    _client = None
    _scripts.clear()
    if os.environ.get("CELERYNB_DIE_WITH_PARENT"):
        die_with_parent()


def _terminating() -> bool:
    """Whether billiard's terminate handler fired (a revoke or shutdown, not func)."""
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # older billiard: treat every SystemExit as a shutdown
        return True
    return bool(terminate_handler_fired())


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        assert settings is not None
        _client = store.connect(settings.backend_url)
    return _client


def _shm() -> ShmStore:
    """The embedded cluster's shared-memory store (its directory comes from the environment)."""
    global _shm_store
    if _shm_store is None:
        from .shm import ShmStore

        directory = os.environ.get(ENV_SHM_DIR)
        if not directory:
            raise RuntimeError("this worker has no CELERYNB_SHM_DIR: it is not the embedded one")
        _shm_store = ShmStore(directory, _secret())
    return _shm_store


def _secret() -> str:
    assert settings is not None
    return settings.secret


def _load_job(
    call: str, blob: bytes, worker: str = ""
) -> tuple[Callable[..., Any], Callable[[list[Any]], Any] | None, tuple[Any, ...], dict[str, Any]]:
    job = _jobs.get(call)
    if job is None:
        job = shipping.load_job(_secret(), blob, worker)
        _jobs[call] = job
        while len(_jobs) > 8:
            _jobs.popitem(last=False)
    return job


def failure_of(exc: BaseException, worker: str) -> RemoteFailure:
    """A picklable description of ``exc``, with the task's own frames dropped."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        pickle.loads(cloudpickle.dumps(exc))
        original: BaseException | None = exc
    except Exception:
        original = None
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        message = (
            f"{message} (the worker {worker} cannot import {exc.name!r}: "
            f"install it where the workers run)"
        )
    return RemoteFailure(type(exc).__qualname__, message, text, original, worker)


def _compute(
    func: Callable[..., Any],
    chunk: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: dict[str, Any],
) -> Any:
    """``func`` on ``chunk`` (several inputs unpacked); re-run ``retries`` times if it raises."""
    inputs = chunk if opts.get("zip") else (chunk,)
    retries = opts.get("retries", 0)
    for attempt in range(retries + 1):
        try:
            return func(*inputs, *args, **kwargs)
        except SoftTimeLimitExceeded:
            raise
        except SystemExit as exc:
            if _terminating():  # the pool is stopping this process: let it go
                raise
            # sys.exit() in func: report it as the chunk's error, keep the process
            raise RuntimeError(f"func raised SystemExit({exc.code!r}) (sys.exit)") from exc
        except Exception as exc:
            if attempt == retries:
                if retries:
                    exc.add_note(f"(failed {retries + 1} times: retries={retries})")
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


def _timeout_error(exc: BaseException, opts: dict[str, Any]) -> BaseException:
    if isinstance(exc, SoftTimeLimitExceeded):
        return TimeoutError(
            f"the chunk ran longer than chunk_timeout={opts.get('chunk_timeout')} s"
        ).with_traceback(exc.__traceback__)
    return exc


def _meta(task: Task, started: float) -> dict[str, Any]:
    return {
        "worker": task.request.hostname or "",
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
    }


_scripts: dict[str, Any] = {}


def _script(name: str) -> Any:
    if name not in _scripts:
        _scripts[name] = _redis().register_script(getattr(store, name))
    return _scripts[name]


def _unpicklable(exc: Exception) -> TypeError:
    return TypeError(
        f"the result of func cannot be pickled to send it back ({type(exc).__name__}: "
        f"{exc}); return plain data (numbers, strings, lists, dicts, arrays, frames)"
    )


def _finish(
    keys: CallKeys,
    guard: str,
    record: Any,
    index: int,
    *,
    part: bytes = b"",
    delete_guard: bool = True,
) -> None:
    """Push ``record`` for the driver, unless the call was cancelled meanwhile."""
    try:
        blob = serialization.dumps(_secret(), record)
    except Exception as exc:
        raise _unpicklable(exc) from exc
    fix = "use more, smaller chunks (chunks=...) or return less data per chunk"
    store.check_size(blob, "the result of this chunk", fix)
    store.check_size(part, "the result of this chunk", fix)
    _script("FINISH")(
        keys=[guard, keys.done, keys.running, keys.stored(index)],
        args=[blob, store.TTL, index, part, "1" if delete_guard else "0"],
        client=_redis(),
    )


@app.task(name=RUN_CHUNK, bind=True)
def run_chunk(self: Task, call: str, index: int, opts: dict[str, Any]) -> int | None:
    """Run the call's function on chunk ``index``; push the result record.

    ``opts``: ``attempts`` (deliveries before a dying worker is given up on),
    ``retries`` (re-runs when func raises), ``chord`` (store for the reducer).
    """
    max_tries, chord = opts["attempts"], opts.get("chord")
    started = time.perf_counter()
    keys = CallKeys(call)
    worker = self.request.hostname or ""
    claimed = _script("CLAIM")(
        keys=[keys.chunk(index), keys.func, keys.tries, keys.running],
        args=[index, worker, store.TTL, "1" if call in _jobs else "0"],
        client=_redis(),
    )
    if claimed is None:  # cancelled, or done by an earlier delivery
        return None
    tries, job_blob, chunk_blob = claimed
    if tries > max_tries or job_blob is None:
        died = _died(tries, job_blob is not None, worker)
        _finish(keys, keys.chunk(index), (index, ERROR, died, _meta(self, started)), index)
        return None
    try:
        func, _, args, kwargs = _load_job(call, job_blob, worker)
        chunk = serialization.loads(_secret(), chunk_blob)
        del chunk_blob
        value = _compute(func, chunk, args, kwargs, opts)
        if chord:
            part = serialization.dumps(_secret(), value)
            record: tuple[Any, ...] = (index, STORED, None, _meta(self, started))
            _finish(keys, keys.chunk(index), record, index, part=part)
        else:
            _finish(keys, keys.chunk(index), (index, OK, value, _meta(self, started)), index)
        return index
    except Exception as exc:
        _report(keys, index, _timeout_error(exc, opts), worker, _meta(self, started))
        return None


def _record_blob(record: tuple[Any, ...]) -> bytes:
    """``record`` serialized for the driver (a failure record if the value does not pickle)."""
    try:
        return serialization.dumps(_secret(), record)
    except Exception as exc:
        index, _, _, meta = record
        failure = failure_of(_unpicklable(exc), meta["worker"])
        return serialization.dumps(_secret(), (index, ERROR, failure, meta))


def _chunk(keys: CallKeys, index: int, blob: bytes | None, shm: ShmStore | None) -> Any:
    """Chunk ``index``: an shm file (its key holds b""), inline ``blob``, or its key's bytes."""
    if blob == b"" and shm is not None:
        return shm.get(keys.chunk_file(index))
    if blob is None:  # too big to come through the script
        blob = cast("bytes | None", _redis().get(keys.chunk(index)))
        if blob is None:
            raise LookupError("the chunk is gone from the store (the call was cancelled)")
    return serialization.loads(_secret(), blob)


def _output(keys: CallKeys, record: tuple[Any, ...], shm: ShmStore | None) -> tuple[bytes, bytes]:
    """``(record bytes for the driver, bytes to park in the result key or b"")``.

    A value goes into an shm file where there is one (with room), a big record
    waits in a key; the driver gets a small ``REF`` record for either.
    """
    index, status, value, meta = record
    big = status == OK and nbytes(value) >= store.INLINE
    if shm is not None and big and shm.put_if_room(keys.result_file(index), value) is not None:
        return serialization.dumps(_secret(), (index, REF, None, {**meta, "shm": True})), b""
    blob = _record_blob(record)
    if len(blob) <= store.INLINE:
        return blob, b""
    try:
        store.check_size(
            blob,
            "the result of this chunk",
            "use more, smaller chunks (chunks=...) or return less data per chunk",
        )
    except store.PayloadTooLarge as exc:
        return serialization.dumps(
            _secret(), (index, ERROR, failure_of(exc, meta["worker"]), meta)
        ), b""
    return serialization.dumps(_secret(), (index, REF, None, meta)), blob


@app.task(name=RUN_CHUNKS, bind=True)
def run_chunks(self: Task, call: str, slot: int, opts: dict[str, Any]) -> int:
    """Run the call's pending chunks one after another; return how many were taken.

    One round trip per chunk reports the last chunk and takes the next (see
    ``store.NEXT``). ``opts`` as for ``run_chunk``, plus ``shm`` (data may be
    in shm files) and ``one`` (take one chunk only, for per-chunk time
    limits). After ``DRAIN_SECONDS`` the slot goes on in a fresh message, so
    other calls get their turn and no message stays unacked for long.
    """
    keys, worker = CallKeys(call), self.request.hostname or ""
    shm = _shm() if opts.get("shm") else None
    stop = time.monotonic() + DRAIN_SECONDS
    prev, record, parked, taken = "", b"", b"", 0
    while True:
        take = not (opts.get("one") and taken) and time.monotonic() < stop
        args = [keys.base, slot, store.TTL, prev, record, "1" if take else "0"]
        args += ["1" if call in _jobs else "0", store.INLINE]
        if parked:  # a big record waits in a key, stored in the same round trip
            pipe = _redis().pipeline(transaction=False)
            pipe.set(keys.stored(int(prev)), parked, ex=store.TTL)
            _script("NEXT")(keys=[keys.done], args=args, client=pipe)
            reply = pipe.execute()[-1]
        else:
            reply = _script("NEXT")(keys=[keys.done], args=args, client=_redis())
        accepted, index, tries, job_blob, chunk_blob, pending = reply
        if shm is not None and prev:  # the chunk's file, and its result's if nobody wants it
            done = [keys.chunk_file(int(prev))]
            shm.delete(done if accepted else [*done, keys.result_file(int(prev))])
        prev, record, parked = "", b"", b""
        if index is None and pending == -1 and take:  # more chunks may come: wait for them
            # (the list's last chunk number rotates to its head: nothing is taken)
            _redis().brpoplpush(keys.pending, keys.pending, timeout=OPEN_WAIT)
            continue
        if index is None:
            if pending and not opts.get("one"):  # time is up, chunks are left: hand over
                self.app.send_task(
                    RUN_CHUNKS,
                    args=(call, slot, opts),
                    task_id=self.request.id,
                    queue=(self.request.delivery_info or {}).get("routing_key")
                    or app.conf.task_default_queue,
                    ignore_result=True,
                )
            return taken
        taken, prev, started = taken + 1, str(index), time.perf_counter()
        try:
            if tries > opts["attempts"] or job_blob is None:
                died = _died(tries, job_blob is not None, worker)
                outcome: tuple[Any, ...] = (index, ERROR, died, _meta(self, started))
            else:
                func, _, extra, kwargs = _load_job(call, job_blob, worker)
                chunk = _chunk(keys, index, chunk_blob, shm)
                del chunk_blob
                value = _compute(func, chunk, extra, kwargs, opts)
                del chunk
                outcome = (index, OK, value, _meta(self, started))
                del value
            record, parked = _output(keys, outcome, shm)
            del outcome
        except Exception as exc:
            failure = failure_of(_timeout_error(exc, opts), worker)
            record = serialization.dumps(_secret(), (index, ERROR, failure, _meta(self, started)))
            parked = b""


def _report(keys: CallKeys, index: int, exc: BaseException, worker: str, meta: Any) -> None:
    """Push a failure record; if even that fails, push a minimal one (never leave a hole)."""
    try:
        _finish(keys, keys.chunk(index), (index, ERROR, failure_of(exc, worker), meta), index)
    except Exception:
        bare = RemoteFailure(
            type(exc).__name__, "the error could not be reported", "", None, worker
        )
        _finish(keys, keys.chunk(index), (index, ERROR, bare, meta), index)


@app.task(name=REDUCE, bind=True, ignore_result=True)
def reduce_chunks(self: Task, indices: list[int | None], call: str) -> None:
    """Chord callback: apply the call's reducer to the stored chunk results."""
    started = time.perf_counter()
    keys = CallKeys(call)
    stored = [keys.stored(i) for i in range(len(indices))]
    chord_keys = store.chord_keys(call, len(indices))
    if any(i is None for i in indices):  # a chunk failed: the driver already knows
        store.delete(_redis(), stored + chord_keys)
        return
    pipe = _redis().pipeline(transaction=False)
    pipe.get(keys.func)
    for key in stored:
        pipe.get(key)
    job_blob, *blobs = pipe.execute()
    if job_blob is None or any(b is None for b in blobs):  # cancelled
        store.delete(_redis(), stored + chord_keys)
        return
    try:
        _, reducer, _, _ = _load_job(call, job_blob, self.request.hostname or "")
        assert reducer is not None
        parts = [serialization.loads(_secret(), b) for b in blobs]
        del blobs
        record: tuple[Any, ...] = (REDUCED, OK, reducer(parts), _meta(self, started))
        del parts
    except Exception as exc:
        record = (
            REDUCED,
            ERROR,
            failure_of(exc, self.request.hostname or ""),
            _meta(self, started),
        )
    store.delete(_redis(), stored + chord_keys)
    _finish(keys, keys.func, record, REDUCED, delete_guard=False)


def main(argv: list[str] | None = None) -> None:
    """Run a worker with Celery's CLI arguments (``worker`` is implied)."""
    app.worker_main(["worker", *(argv if argv is not None else sys.argv[1:])])
