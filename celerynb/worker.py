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
from typing import Any

import cloudpickle
import redis
from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded

from . import serialization, shipping, store
from ._proc import die_with_parent
from .app import REDUCE, RUN_CHUNK, Settings, make_app
from .errors import RemoteFailure
from .store import ERROR, OK, REDUCED, STORED, CallKeys

log = logging.getLogger(__name__)

try:
    settings: Settings | None = Settings.from_env()
    _config_error = ""
except ValueError as exc:
    settings, _config_error = None, str(exc)

app: Celery = make_app(settings) if settings else Celery("celerynb", set_as_current=False)

_client: redis.Redis | None = None
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
        raise TypeError(
            f"the result of func cannot be pickled to send it back ({type(exc).__name__}: "
            f"{exc}); return plain data (numbers, strings, lists, dicts, arrays, frames)"
        ) from exc
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
    max_tries, retries, chord = opts["attempts"], opts.get("retries", 0), opts.get("chord")
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
        died = RemoteFailure(
            "WorkerLostError",
            f"the worker process running this chunk died {tries - 1} times "
            "(killed by a signal, out of memory, or a crash in native code); "
            "giving up on it"
            if job_blob is not None
            else "the call's function is gone from the store (expired or deleted)",
            "",
            None,
            worker,
        )
        _finish(keys, keys.chunk(index), (index, ERROR, died, _meta(self, started)), index)
        return None
    try:
        func, _, args, kwargs = _load_job(call, job_blob, worker)
        chunk = serialization.loads(_secret(), chunk_blob)
        del chunk_blob
        inputs = chunk if opts.get("zip") else (chunk,)
        for attempt in range(retries + 1):
            try:
                value = func(*inputs, *args, **kwargs)
                break
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
        if chord:
            part = serialization.dumps(_secret(), value)
            record: tuple[Any, ...] = (index, STORED, None, _meta(self, started))
            _finish(keys, keys.chunk(index), record, index, part=part)
        else:
            _finish(keys, keys.chunk(index), (index, OK, value, _meta(self, started)), index)
        return index
    except Exception as exc:
        if isinstance(exc, SoftTimeLimitExceeded):
            exc = TimeoutError(
                f"the chunk ran longer than chunk_timeout={opts.get('chunk_timeout')} s"
            ).with_traceback(exc.__traceback__)
        _report(keys, index, exc, worker, _meta(self, started))
        return None


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
