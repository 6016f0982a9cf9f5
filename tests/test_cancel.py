"""A cancel stops the running chunks without killing the pool processes that run them,
so the next call starts at once; a chunk that ignores the stop is killed after a grace."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

import celerynb
from celerynb import dispatch

BOUND = 20.0  # seconds any wait below may take (a failure, not a measure)


def marking(directory: Path, stubborn: bool = False) -> Callable[[list[int]], list[int]]:
    """func that writes ``<pid>.pid``, sleeps long and writes ``<pid>.stopped`` when it is
    interrupted; ``stubborn``: it swallows the interruption and sleeps on."""
    where = str(directory)

    def work(xs: list[int]) -> list[int]:
        pid = os.getpid()
        open(os.path.join(where, f"{pid}.pid"), "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(60)
            except BaseException:
                open(os.path.join(where, f"{pid}.stopped"), "w").close()
                if not stubborn:
                    raise
        return xs

    return work


def wait_for(what: str, check: Callable[[], bool], bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {bound} s"
        time.sleep(0.05)


def pids_in(directory: Path, suffix: str) -> set[int]:
    return {int(p.stem) for p in directory.glob(f"*.{suffix}")}


def cancel_running(cluster: celerynb.Cluster, tmp_path: Path, stubborn: bool = False) -> set[int]:
    """Start two slow chunks, cancel them while they run; the pids that ran them."""
    future = celerynb.cmap_async(marking(tmp_path, stubborn), [1, 2], chunks=2, cluster=cluster,
                                 progress=False)  # fmt: skip
    wait_for("two chunks running", lambda: len(pids_in(tmp_path, "pid")) == 2)
    assert future.cancel()
    return pids_in(tmp_path, "pid")


def next_call_runs_on(cluster: celerynb.Cluster) -> set[int]:
    future = celerynb.cmap_async(lambda xs: xs, list(range(4)), chunks=4, cluster=cluster,
                                 progress=False)  # fmt: skip
    assert future.result(timeout=BOUND) == list(range(4))
    return set(future.stats()["pid"])


def test_a_cancel_stops_running_chunks_and_keeps_the_pool_processes(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    pids = cancel_running(cluster, tmp_path)
    wait_for("the chunks stopping", lambda: pids_in(tmp_path, "stopped") == pids)
    assert all(psutil.pid_exists(pid) for pid in pids)
    assert next_call_runs_on(cluster) <= pids  # the same pool processes take the next call


def test_a_cancel_on_a_deployment_keeps_the_pool_process(
    remote: celerynb.Cluster, tmp_path: Path
) -> None:
    pids = cancel_running(remote, tmp_path)
    wait_for("the chunks stopping", lambda: pids_in(tmp_path, "stopped") == pids)
    assert all(psutil.pid_exists(pid) for pid in pids)
    assert next_call_runs_on(remote) <= pids


def test_a_chunk_that_ignores_the_cancel_is_killed_after_the_grace(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    pids = cancel_running(cluster, tmp_path, stubborn=True)
    wait_for("the chunks noticing the stop", lambda: pids_in(tmp_path, "stopped") == pids)
    assert all(psutil.pid_exists(pid) for pid in pids)  # they ignored it
    wait_for(
        "the stubborn pool processes killed",
        lambda: not any(psutil.pid_exists(pid) for pid in pids),
        dispatch.CANCEL_GRACE_S + BOUND,
    )
    assert next_call_runs_on(cluster).isdisjoint(pids)  # replaced; the cluster works
