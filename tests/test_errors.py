"""Failures of a cmap call: chunk errors, bad arguments, timeouts, cancellation.

Everything runs on the real session cluster (redis-server + a prefork Celery
worker with 2 pool processes). After every failure the cluster must still work.
"""

from __future__ import annotations

import _thread
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

import celerynb
from celerynb.errors import RemoteTraceback

HANG = 30.0  # seconds a "slow" chunk sleeps; every bound below is well under it
BOUND = 15.0  # generous "does not hang" bound for a call that must fail promptly


class ScoringError(Exception):
    """A user's own exception type (pickled by reference to this module)."""


class NeedsTwoArgs(Exception):
    """An exception that cannot be unpickled (its __init__ wants two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"a={a} b={b}")


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], data: Any, **kw: Any) -> Any:
    return celerynb.cmap(func, data, cluster=cluster, progress=False, **kw)


def assert_cluster_ok(cluster: celerynb.LocalCluster) -> None:
    """The cluster still runs a call on both pool processes, promptly."""
    started = time.monotonic()
    out = run(cluster, lambda xs: [x * 2 for x in xs], list(range(8)), chunks=4)
    assert out == [x * 2 for x in range(8)]
    assert time.monotonic() - started < BOUND
    assert cluster.state == "running"


def celerynb_keys(cluster: celerynb.LocalCluster) -> set[bytes]:
    return set(cluster.redis.scan_iter("celerynb:*"))


def wait_pids(directory: Path, n: int) -> list[int]:
    """PIDs the slow chunks wrote into ``directory`` (waits for ``n`` of them)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        files = [p for p in directory.glob("*.pid") if p.stat().st_size]
        if len(files) >= n:
            return [int(p.read_text()) for p in files]
        time.sleep(0.05)
    raise AssertionError(f"the slow chunks did not start within {BOUND} s")


def assert_terminated(pids: list[int]) -> None:
    """The slow chunks the pool processes ``pids`` ran were stopped (revoked): each said
    so as it stopped (``<pid>.stopped``), and its process lives on for the next task."""
    directory = Path(slow_dir[0])
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        left = [pid for pid in pids if not (directory / f"{pid}.stopped").exists()]
        if not left:
            alive = [pid for pid in pids if psutil.pid_exists(pid)]
            assert alive == pids, "a cancel killed pool processes instead of stopping the chunk"
            return
        time.sleep(0.1)
    raise AssertionError(f"pool processes still running the revoked chunks: {left}")


slow_dir: list[str] = [""]  # the directory of the last slow_chunk's pid files


def slow_chunk(pid_dir: str, fail_first: bool = False) -> Callable[[list[int]], list[int]]:
    """func whose chunks record their pid and sleep HANG s (chunk 0 may fail instead);
    a chunk stopped on its way records ``<pid>.stopped``."""
    slow_dir[0] = pid_dir

    def work(xs: list[int]) -> list[int]:
        if fail_first and xs[0] == 0:
            # fail only once the slow chunk runs, so the failure races a busy pool
            deadline = time.monotonic() + 10
            while not any(n.endswith(".pid") for n in os.listdir(pid_dir)):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            raise ValueError("the fast chunk failed")
        tmp = os.path.join(pid_dir, f"{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, os.path.join(pid_dir, f"{os.getpid()}.pid"))
        try:
            time.sleep(HANG)
        except BaseException:
            open(os.path.join(pid_dir, f"{os.getpid()}.stopped"), "w").close()
            raise
        return xs

    return work


# -- ChunkError ---------------------------------------------------------------


def test_chunk_error_names_range_labels_and_keeps_type(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"a": range(40)}, index=[f"r{i:02d}" for i in range(40)])

    def score(d: pd.DataFrame) -> pd.DataFrame:
        if "r25" in d.index:
            raise ValueError(f"bad row among {len(d)} rows")
        return d

    with pytest.raises(ValueError) as info:
        run(cluster, score, df, chunks=4)
    err = info.value
    assert isinstance(err, celerynb.ChunkError)
    assert isinstance(err, celerynb.CelerynbError)
    msg = str(err)
    assert "chunk 2 of 4" in msg
    assert "positions 20:30" in msg
    assert "'r20'" in msg and "'r29'" in msg
    assert "ValueError: bad row among 10 rows" in msg
    assert cluster.hostname in msg and err.worker == cluster.hostname
    assert (err.chunk.index, err.chunk.start, err.chunk.stop) == (2, 20, 30)
    assert (err.chunk.first_label, err.chunk.last_label) == ("r20", "r29")
    assert isinstance(err.original, ValueError)
    assert err.original.args == ("bad row among 10 rows",)
    # the worker's traceback: the function's name and its failing source line
    assert "in score" in err.remote_traceback
    assert "run_chunk" not in err.remote_traceback  # the task's own frame is dropped
    assert isinstance(err.__cause__, RemoteTraceback)
    lines = err._render_traceback_()
    assert isinstance(lines, list) and all(isinstance(line, str) for line in lines)
    assert lines[0].startswith("ChunkError: chunk 2 of 4")
    assert any("in score" in line for line in lines)
    assert_cluster_ok(cluster)


def test_remote_traceback_shows_source_file_and_line(cluster: celerynb.LocalCluster) -> None:
    # Was: cloudpickle >= 3.1 replaces co_filename with "<dynamic-code>" when it pickles a
    # function by value (celerynb/api.py _pickle_job), so the worker's traceback reads
    # `File "<dynamic-code>", line 115, in score` with no source text: the user cannot see
    # which line failed. The fix: the driver (which has the source, also for notebook
    # cells via linecache) rewrites those frames when it builds the ChunkError.
    def score(xs: list[int]) -> list[int]:
        raise ValueError("unique-source-marker")

    with pytest.raises(celerynb.ChunkError) as info:
        run(cluster, score, [1, 2], chunks=1)
    text = info.value.remote_traceback
    assert 'raise ValueError("unique-source-marker")' in text, text
    assert __file__ in text or os.path.basename(__file__) in text, text


def test_chunk_error_is_a_key_error(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"a": range(10)})
    with pytest.raises(KeyError) as info:
        run(cluster, lambda d: d["no_such_column"], df, chunks=2)
    err = info.value
    assert isinstance(err, celerynb.ChunkError)
    assert "KeyError" in str(err) and "no_such_column" in str(err)
    where = (
        r"chunk (0 of 2 \(positions 0:5, index 0 \.\. 4\)"
        r"|1 of 2 \(positions 5:10, index 5 \.\. 9\))"
    )
    assert re.match(where + " failed", str(err)), str(err)
    assert_cluster_ok(cluster)


def test_chunk_error_is_a_custom_exception(cluster: celerynb.LocalCluster) -> None:
    def check(xs: list[int]) -> list[int]:
        if 7 in xs:
            raise ScoringError("seven is not allowed")
        return xs

    with pytest.raises(ScoringError) as info:
        run(cluster, check, list(range(10)), chunks=5)
    err = info.value
    assert isinstance(err, celerynb.ChunkError)
    assert type(err.original) is ScoringError
    msg = str(err)
    assert "chunk 3 of 5 (positions 6:8)" in msg  # a list has no index labels
    assert "index" not in msg.split("failed")[0]
    assert "ScoringError: seven is not allowed" in msg
    assert "in check" in err.remote_traceback
    assert_cluster_ok(cluster)


class RowError(Exception):
    """A user's exception that carries data in an attribute."""

    def __init__(self, message: str, row: int) -> None:
        super().__init__(message, row)
        self.row = row


def test_chunk_error_keeps_the_original_attributes(cluster: celerynb.LocalCluster) -> None:
    # Was: ChunkError.build (celerynb/errors.py) makes an instance of a subclass of the
    # original type but copies none of its state, so a handler written for the original
    # type breaks: `except RowError as e: e.row` raises AttributeError, and
    # `except FileNotFoundError as e: e.filename` is None. The fix: in build(), after
    # BaseException.__init__, copy the original's __dict__ and, for OSError, its
    # errno/strerror/filename/filename2 onto err (ignoring failures).
    def bad_row(xs: list[int]) -> list[int]:
        raise RowError("bad row", xs[0])

    with pytest.raises(RowError) as info:
        run(cluster, bad_row, [7, 8], chunks=1)
    assert isinstance(info.value.original, RowError) and info.value.original.row == 7
    assert getattr(info.value, "row", "<missing>") == 7

    def read(xs: list[int]) -> list[int]:
        with open("/nonexistent-celerynb-dir/file.csv") as f:
            return [len(f.read())]

    with pytest.raises(FileNotFoundError) as os_info:
        run(cluster, read, [1], chunks=1)
    assert os_info.value.filename == "/nonexistent-celerynb-dir/file.csv"
    assert os_info.value.errno == 2


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def test_exception_whose_str_fails_does_not_hang_the_call(cluster: celerynb.LocalCluster) -> None:
    # Was: failure_of (celerynb/worker.py, `message = str(exc)`) raises inside run_chunk's
    # `except` block, so no record reaches the driver and cmap waits forever (here: until
    # timeout=). The fix: `try: message = str(exc) except Exception: message =
    # f"<unprintable {type(exc).__name__}>"`, and in run_chunk fall back to a minimal
    # RemoteFailure if building or pushing the failure record raises.
    def unprintable(xs: list[int]) -> list[int]:
        raise UnprintableError("x")

    started = time.monotonic()
    with pytest.raises(celerynb.ChunkError) as info:
        run(cluster, unprintable, [1, 2], chunks=1, timeout=BOUND)
    assert time.monotonic() - started < BOUND
    assert "UnprintableError" in str(info.value)
    assert_cluster_ok(cluster)


def test_sys_exit_in_func_is_a_chunk_error(cluster: celerynb.LocalCluster) -> None:
    # Was: run_chunk (celerynb/worker.py) catches only Exception, so sys.exit() in func
    # ends the pool process; the chunk is redelivered `attempts` times and finally reported
    # as "WorkerLostError: the worker process running this chunk died 3 times (killed by a
    # signal, out of memory, ...)", which hides the real cause. The fix: around the
    # func(...) call, also catch SystemExit and report it like any other exception.
    def quits(xs: list[int]) -> list[int]:
        sys.exit(3)

    with pytest.raises(celerynb.ChunkError) as info:
        run(cluster, quits, [1, 2], chunks=1, timeout=60)
    assert "SystemExit" in str(info.value), str(info.value)
    assert "in quits" in info.value.remote_traceback
    assert_cluster_ok(cluster)


def test_unpicklable_exception_still_gives_chunk_error(cluster: celerynb.LocalCluster) -> None:
    def check(xs: list[int]) -> list[int]:
        raise NeedsTwoArgs(1, 2)

    with pytest.raises(celerynb.ChunkError) as info:
        run(cluster, check, [1, 2], chunks=1)
    err = info.value
    assert not isinstance(err, NeedsTwoArgs)  # it could not be sent back
    assert err.original is None
    assert "NeedsTwoArgs: a=1 b=2" in str(err)
    assert "in check" in err.remote_traceback
    assert_cluster_ok(cluster)


def test_failure_does_not_wait_for_slow_chunks(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="the fast chunk failed"):
        run(cluster, slow_chunk(str(tmp_path), fail_first=True), list(range(4)), chunks=2)
    assert time.monotonic() - started < BOUND  # the slow chunk sleeps HANG = 30 s
    pids = wait_pids(tmp_path, 1)
    assert_terminated(pids)  # the slow chunk was revoked and its process stopped
    assert_cluster_ok(cluster)


# -- errors before anything is submitted -------------------------------------


def test_closure_over_lock_is_refused_before_submission(cluster: celerynb.LocalCluster) -> None:
    lock = threading.Lock()

    def guarded(xs: list[int]) -> list[int]:
        with lock:
            return xs

    before = celerynb_keys(cluster)
    with pytest.raises(TypeError) as info:
        run(cluster, guarded, list(range(10)))
    msg = str(info.value)
    assert "closure variable 'lock'" in msg
    assert "func cannot be pickled" in msg
    assert celerynb_keys(cluster) == before  # nothing was written for the call
    assert cluster.redis.llen(cluster.settings.queue) == 0
    assert_cluster_ok(cluster)


def test_closure_over_socket_is_refused(cluster: celerynb.LocalCluster) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:

        def send(xs: list[int]) -> list[int]:
            conn.sendall(b"x")
            return xs

        before = celerynb_keys(cluster)
        with pytest.raises(TypeError, match="closure variable 'conn'"):
            run(cluster, send, list(range(10)))
        assert celerynb_keys(cluster) == before


def test_unpicklable_reducer_is_named(cluster: celerynb.LocalCluster) -> None:
    lock = threading.Lock()

    def total(parts: list[int]) -> int:
        with lock:
            return sum(parts)

    with pytest.raises(TypeError) as info:
        run(cluster, sum, list(range(10)), reduce=total)
    assert str(info.value).startswith("reduce cannot be pickled")
    assert "closure variable 'lock'" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"a": 1, "b": 2}, id="dict"),
        pytest.param({1, 2, 3}, id="set"),
        pytest.param(42, id="int"),
        # Was (celerynb/chunking.py, kind_of): the messages for str and 0-d arrays give
        # a specific hint but do not name the supported types as the others do.
        pytest.param("abc", id="str"),
        pytest.param(np.array(3.0), id="0d-array"),
    ],
)
def test_unsupported_data_names_supported_types(cluster: celerynb.LocalCluster, data: Any) -> None:
    with pytest.raises(TypeError) as info:
        run(cluster, lambda x: x, data)
    msg = str(info.value)
    for kind in ("DataFrame", "ndarray", "list"):
        assert kind in msg, msg


def test_unsupported_data_specific_hints(cluster: celerynb.LocalCluster) -> None:
    hints = {
        "d.items()": {"a": 1},
        "sorted(...)": {1, 2},
        "text.splitlines()": "abc",
        "0-d array": np.array(3.0),
        "cannot split int": 42,
    }
    for hint, data in hints.items():
        with pytest.raises(TypeError) as info:
            run(cluster, lambda x: x, data)
        assert hint in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"chunks": 0}, ValueError, "chunks must be a positive int, got 0"),
        ({"chunks": -1}, ValueError, "chunks must be a positive int, got -1"),
        ({"chunks": 1.5}, TypeError, "chunks must be a positive int, got 1.5"),
        ({"chunks": True}, TypeError, "chunks must be a positive int"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int, got 0"),
        ({"chunk_size": -5}, ValueError, "chunk_size must be a positive int"),
        ({"chunks": 2, "chunk_size": 3}, ValueError, "chunks= or chunk_size=, not both"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number"),
        ({"timeout": -1.0}, ValueError, "timeout must be a positive number"),
    ],
)
def test_bad_arguments(
    cluster: celerynb.LocalCluster, kwargs: dict[str, Any], exc: type[Exception], words: str
) -> None:
    before = celerynb_keys(cluster)
    with pytest.raises(exc) as info:
        run(cluster, lambda x: x, list(range(10)), **kwargs)
    assert words in str(info.value)
    assert celerynb_keys(cluster) == before


def test_func_not_callable(cluster: celerynb.LocalCluster) -> None:
    with pytest.raises(TypeError, match="func must be callable, got int"):
        run(cluster, 3, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reduce must be callable, got str"):
        run(cluster, len, [1, 2], reduce="sum")  # type: ignore[arg-type]


# -- failures after the chunks ran --------------------------------------------


def test_inconsistent_result_types(cluster: celerynb.LocalCluster) -> None:
    def mixed(xs: list[int]) -> Any:
        return list(xs) if xs[0] == 0 else np.asarray(xs)

    with pytest.raises(TypeError) as info:
        run(cluster, mixed, list(range(4)), chunks=2)
    msg = str(info.value)
    assert "inconsistent types" in msg
    assert "chunk 0 returned list" in msg and "chunk 1 returned ndarray" in msg
    assert_cluster_ok(cluster)


def test_reducer_error_names_the_reducer(cluster: celerynb.LocalCluster) -> None:
    def bad_total(parts: list[int]) -> float:
        return sum(parts) / 0

    with pytest.raises(ZeroDivisionError) as info:
        run(cluster, sum, list(range(10)), chunks=3, reduce=bad_total)
    err = info.value
    assert isinstance(err, celerynb.ChunkError)
    assert str(err).startswith("the reducer failed")
    assert "ZeroDivisionError" in str(err)
    assert err.chunk is None
    assert "in bad_total" in err.remote_traceback
    assert_cluster_ok(cluster)
    # and a reduce call works afterwards
    assert run(cluster, sum, list(range(10)), chunks=3, reduce=sum) == 45


def test_chunk_error_with_reduce(cluster: celerynb.LocalCluster) -> None:
    def part(xs: list[int]) -> int:
        if 9 in xs:
            raise ScoringError("nine")
        return sum(xs)

    with pytest.raises(ScoringError) as info:
        run(cluster, part, list(range(10)), chunks=5, reduce=sum)
    assert "chunk 4 of 5 (positions 8:10)" in str(info.value)
    assert_cluster_ok(cluster)
    assert run(cluster, sum, list(range(10)), chunks=5, reduce=sum) == 45


# -- MapFuture: timeouts and cancellation ------------------------------------


def test_result_timeout_keeps_running(cluster: celerynb.LocalCluster) -> None:
    def slowish(xs: list[int]) -> list[int]:
        time.sleep(1.5)
        return [x + 1 for x in xs]

    future = celerynb.cmap_async(slowish, list(range(6)), chunks=2, cluster=cluster, progress=False)
    assert isinstance(future, celerynb.MapFuture)
    assert repr(future).startswith("<MapFuture running: 0 of 2 chunks done, 0/6 items")
    with pytest.raises(celerynb.CallTimeout, match="keeps running"):
        future.result(timeout=0.1)
    assert not future.done()
    assert future.result(timeout=BOUND) == [x + 1 for x in range(6)]
    assert future.done()
    assert future.cancel() is False  # already finished
    assert repr(future).startswith("<MapFuture finished: 2 of 2 chunks done, 6/6 items")
    assert future.workers == [cluster.hostname] * 2
    assert "finished" in future._repr_html_()


def test_cancel_then_result_raises(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    future = celerynb.cmap_async(
        slow_chunk(str(tmp_path)), list(range(4)), chunks=2, cluster=cluster, progress=False
    )
    pids = wait_pids(tmp_path, 2)  # both chunks are running
    assert future.cancel() is True
    assert future.cancel() is False
    assert future.done()
    started = time.monotonic()
    with pytest.raises(celerynb.CancelledError, match="cancelled"):
        future.result(timeout=BOUND)
    assert time.monotonic() - started < BOUND
    assert repr(future).startswith("<MapFuture cancelled: 0 of 2 chunks done")
    assert_terminated(pids)
    assert_cluster_ok(cluster)


def test_cmap_timeout_cancels_the_call(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(celerynb.CallTimeout) as info:
        run(cluster, slow_chunk(str(tmp_path)), list(range(4)), chunks=2, timeout=0.5)
    assert time.monotonic() - started < BOUND
    assert "timeout=0.5" in str(info.value) and "cancelled" in str(info.value)
    # whichever slow chunks started were stopped
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid") if p.stat().st_size]
    assert_terminated(pids)
    assert_cluster_ok(cluster)


def test_interrupting_the_wait_cancels_the_call(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    def interrupt_when_running() -> None:
        wait_pids(tmp_path, 2)
        _thread.interrupt_main()  # what Ctrl-C / the notebook's stop button does

    helper = threading.Thread(target=interrupt_when_running, daemon=True)
    helper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(cluster, slow_chunk(str(tmp_path)), list(range(4)), chunks=2)
    assert time.monotonic() - started < BOUND + 5
    helper.join(BOUND)
    assert_terminated(wait_pids(tmp_path, 2))
    assert_cluster_ok(cluster)


def test_repr_of_empty_call(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(lambda xs: xs, [], cluster=cluster, progress=False)
    assert future.done()
    assert future.result() == []
    assert repr(future).startswith("<MapFuture finished: 0 of 0 chunks done, 0/0 items")
