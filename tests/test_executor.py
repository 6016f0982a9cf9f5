"""celerynb.Executor behaves as concurrent.futures' ProcessPoolExecutor on the same cases
(each test runs on both), and what only it does: lazy map, cancelling running work,
shutdown that leaves the cluster running."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import celerynb

GATE_S = 60.0  # the longest a gated function waits for its gate before it gives up


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def invert(x: int) -> float:
    return 1 / x


def gated(gate: str, value: int) -> int:
    """``value`` once the file ``gate`` exists: work that runs until the test lets it end."""
    deadline = time.monotonic() + GATE_S
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def pid(_: object = None) -> int:
    return os.getpid()


@pytest.fixture(params=["process", "celerynb"])
def executor(
    request: pytest.FixtureRequest, cluster: celerynb.LocalCluster
) -> Iterator[cf.Executor]:
    """The standard library's ProcessPoolExecutor, and celerynb's on the session's cluster
    (2 pool processes each)."""
    if request.param == "process":
        ex: cf.Executor = cf.ProcessPoolExecutor(max_workers=2)
    else:
        ex = cluster.executor()
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation ends every ``gated`` call (created at the end in any case)."""
    path = tmp_path / "gate"
    yield path
    path.touch()


# -- the same behaviour as the standard library's ------------------------------------------------
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_returns_results_in_order(executor: cf.Executor, chunksize: int) -> None:
    assert list(executor.map(square, range(50), chunksize=chunksize)) == [x * x for x in range(50)]


def test_map_zips_several_iterables_to_the_shortest(executor: cf.Executor) -> None:
    assert list(executor.map(add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]


def test_map_of_nothing_is_empty(executor: cf.Executor) -> None:
    assert list(executor.map(square, [])) == []


def test_submit_passes_args_and_kwargs(executor: cf.Executor) -> None:
    assert executor.submit(add, 1, 2, z=3).result(timeout=60) == 6


def test_submit_reraises_the_original_exception_type(executor: cf.Executor) -> None:
    future = executor.submit(invert, 0)
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=60)
    assert isinstance(future.exception(), ZeroDivisionError)


def test_map_yields_the_results_before_a_failed_item_then_raises(executor: cf.Executor) -> None:
    results = executor.map(invert, [1, 2, 0, 4])
    assert next(results) == 1.0
    assert next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout_counts_from_the_map_call(executor: cf.Executor, gate: Path) -> None:
    results = executor.map(gated, [str(gate)] * 2, [1, 2], timeout=0.5)
    with pytest.raises(TimeoutError):
        next(results)


def test_result_timeout_raises_timeout_error(executor: cf.Executor, gate: Path) -> None:
    future = executor.submit(gated, str(gate), 1)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    gate.touch()
    assert future.result(timeout=60) == 1


def test_cancel_a_queued_future(executor: cf.Executor, gate: Path) -> None:
    busy = [executor.submit(gated, str(gate), i) for i in range(2)]
    queued = [executor.submit(square, i) for i in range(10)]
    late = queued[5:]
    assert all(f.cancel() for f in late)
    assert all(f.cancelled() and f.done() for f in late)
    with pytest.raises(cf.CancelledError):
        late[0].result(timeout=10)
    gate.touch()
    assert [f.result(timeout=60) for f in busy] == [0, 1]
    assert [f.result(timeout=60) for f in queued[:5]] == [0, 1, 4, 9, 16]
    assert not busy[0].cancel()  # it ended: too late


def test_shutdown_cancel_futures_cancels_what_waits(executor: cf.Executor, gate: Path) -> None:
    busy = [executor.submit(gated, str(gate), i) for i in range(2)]
    queued = [executor.submit(square, i) for i in range(10)]
    release = threading.Timer(0.5, gate.touch)  # the running ones end while it waits
    release.start()
    executor.shutdown(wait=True, cancel_futures=True)
    release.join()
    assert all(f.done() for f in [*busy, *queued])
    assert all(f.cancelled() for f in queued[-5:])
    for i, f in enumerate(busy):  # celerynb stops running work too
        assert f.cancelled() or f.result() == i
    with pytest.raises(RuntimeError):
        executor.submit(square, 1)


def test_as_completed_yields_every_future(executor: cf.Executor) -> None:
    futures = {executor.submit(square, i): i for i in range(8)}
    done = {futures[f]: f.result() for f in cf.as_completed(futures, timeout=60)}
    assert done == {i: i * i for i in range(8)}


def test_wait_first_completed_and_all_completed(executor: cf.Executor, gate: Path) -> None:
    slow = executor.submit(gated, str(gate), 1)
    quick = executor.submit(square, 3)
    done, not_done = cf.wait([slow, quick], timeout=60, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    gate.touch()
    done, not_done = cf.wait([slow, quick], timeout=60)
    assert done == {slow, quick} and not not_done


def test_done_callbacks_run(executor: cf.Executor) -> None:
    seen: list[int] = []
    future = executor.submit(square, 4)
    future.add_done_callback(lambda f: seen.append(f.result()))
    future.result(timeout=60)
    cf.wait([future])
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [16]


def test_asyncio_wrap_future(executor: cf.Executor) -> None:
    async def main() -> int:
        return int(await asyncio.wrap_future(executor.submit(square, 5)))

    assert asyncio.run(main()) == 25


def test_with_block_waits_for_the_work(executor: cf.Executor) -> None:
    with executor as ex:
        futures = [ex.submit(square, i) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_work_runs_in_other_processes(executor: cf.Executor) -> None:
    pids = set(executor.map(pid, range(8)))
    assert os.getpid() not in pids


# -- celerynb's own ----------------------------------------------------------------------------
def test_errors_are_chunk_errors_that_name_the_item(cluster: celerynb.LocalCluster) -> None:
    ex = celerynb.Executor(cluster)
    with pytest.raises(ZeroDivisionError) as failed:
        list(ex.map(invert, [1, 0, 2]))
    error = failed.value
    assert isinstance(error, celerynb.ChunkError)
    assert error.chunk.start == 1
    assert "invert" in error.remote_traceback
    with pytest.raises(celerynb.ChunkError):
        ex.submit(invert, 0).result(timeout=60)


def test_map_reads_an_endless_iterator_lazily(cluster: celerynb.LocalCluster) -> None:
    read = itertools.count()
    results = cluster.executor(max_ahead=2).map(square, read, chunksize=2)
    assert list(itertools.islice(results, 10)) == [x * x for x in range(10)]
    results.close()  # leaving the loop cancels the rest
    assert next(read) < 10_000


def test_cancel_stops_running_work(cluster: celerynb.LocalCluster, gate: Path) -> None:
    started = gate.with_name("started")

    def announce_then_wait() -> int:
        started.touch()
        return gated(str(gate), 1)

    future = cluster.executor().submit(announce_then_wait)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists()
    assert future.cancel()
    assert future.cancelled()
    future.call.exception(timeout=60)  # the call itself ended, its work revoked
    assert future.call.cancelled()


def test_shutdown_leaves_the_cluster_running(cluster: celerynb.LocalCluster) -> None:
    with celerynb.Executor(cluster) as ex:
        assert ex.submit(square, 2).result(timeout=60) == 4
    assert not cluster.closed
    assert celerynb.cmap(len, [[3]], cluster=cluster, progress=False) == [1]


def test_executor_rejects_options_that_shape_results(cluster: celerynb.LocalCluster) -> None:
    with pytest.raises(TypeError, match="reduce"):
        celerynb.Executor(cluster, reduce=sum)
    with pytest.raises(ValueError, match="retries"):
        celerynb.Executor(cluster, retries=-1)
    with pytest.raises(ValueError, match="chunksize"):
        celerynb.Executor(cluster).map(square, [1], chunksize=0)


def test_retries_apply_to_submitted_work(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    marker = tmp_path / "tried"

    def flaky() -> str:
        if not marker.exists():
            marker.touch()
            raise OSError("first try fails")
        return "second try"

    assert celerynb.Executor(cluster, retries=1).submit(flaky).result(timeout=60) == "second try"


def test_repr_says_what_runs(cluster: celerynb.LocalCluster) -> None:
    ex = cluster.executor()
    future = ex.submit(square, 1)
    future.result(timeout=60)
    assert "square" in repr(future) and "finished" in repr(future)
    assert "celerynb.Executor" in repr(ex)
