"""The ``%celerynb`` magics, through a real IPython shell and real clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import celerynb
from celerynb import magics
from celerynb.cluster import registry
from celerynb.magics import USAGE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A shell with the extension loaded and no current cluster; unloaded afterwards."""
    shell = InteractiveShell.instance()
    monkeypatch.setattr(registry, "_last", None)
    monkeypatch.delenv("CELERYNB_BROKER_URL", raising=False)
    shell.run_line_magic("load_ext", "celerynb")
    yield shell
    shell.run_line_magic("unload_ext", "celerynb")
    current = celerynb.current()
    if current is not None and current.kind == "remote":
        current.close()


def test_loading_starts_nothing(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert "celerynb" in ip.magics_manager.magics["line"]
    assert celerynb.current() is None
    assert magics._started == []
    ip.run_line_magic("celerynb", "status")
    assert "no cluster yet" in capsys.readouterr().out
    assert celerynb.current() is None


@pytest.mark.parametrize(
    "line, problem",
    [
        ("", "the following arguments are required: command"),
        ("bogus", "invalid choice: 'bogus'"),
        ("start -n", "-n/--n-workers: expected one argument"),
        ("start -n x", "-n wants a positive integer, got 'x'"),
        ("start -n 0", "-n wants a positive integer, got '0'"),
        ("start --workers 2", "unrecognized arguments: --workers 2"),
        ("stop --detach", "--detach goes with start only"),
        ("connect a b", "unrecognized arguments: b"),
        ("status now", "status takes no arguments"),
        ("stop -n 2", "-n goes with start or logs only"),
        ("stop 'unclosed", "No closing quotation"),
    ],
)
def test_usage_errors(ip: InteractiveShell, line: str, problem: str) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("celerynb", line)
    assert problem in str(info.value)
    assert str(info.value).endswith(USAGE)
    assert celerynb.current() is None


def test_usage_error_in_a_cell(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = ip.run_cell("%celerynb frobnicate")
    assert isinstance(result.error_in_exec, UsageError)
    printed = capsys.readouterr()
    assert "invalid choice: 'frobnicate'" in printed.err + printed.out
    assert "Traceback" not in printed.err + printed.out


def test_start_status_stop_restart(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("celerynb", "start -n 1")
    local = celerynb.current()
    assert isinstance(local, celerynb.LocalCluster) and local.concurrency == 1
    assert "celerynb: started <LocalCluster running workers=1" in capsys.readouterr().out

    ip.run_line_magic("celerynb", "start")  # a second start replaces nothing
    assert "already using" in capsys.readouterr().out
    assert celerynb.current() is local

    # status while a chunk runs and others wait
    future = celerynb.cmap_async(lambda xs: time.sleep(1.5), list(range(4)), chunks=4,
                                 progress=False)  # fmt: skip
    time.sleep(0.5)
    ip.run_line_magic("celerynb", "status")
    status = capsys.readouterr().out
    password = local.settings.broker_url.split(":")[2].split("@")[0]
    assert password not in status
    assert "cluster:  local (running) (started by %celerynb)" in status
    assert "broker:   redis://:***@127.0.0.1:" in status
    assert "workers:  1 worker(s), concurrency 1 in all" in status
    assert f"  {local.hostname}: concurrency 1" in status
    assert "chunks:   " in status and " 1 running" in status
    future.cancel()

    pids = local.pids
    ip.run_line_magic("celerynb", "restart")
    fresh = celerynb.current()
    assert fresh is not local and isinstance(fresh, celerynb.LocalCluster)
    assert local.closed and fresh.concurrency == 1
    _wait_dead(pids)
    assert celerynb.cmap(lambda xs: [x * 3 for x in xs], [1, 2], progress=False) == [3, 6]

    pids = fresh.pids
    ip.run_line_magic("celerynb", "stop")
    assert "celerynb: stopped <LocalCluster closed" in capsys.readouterr().out
    assert fresh.closed and celerynb.current() is None
    _wait_dead(pids)
    ip.run_line_magic("celerynb", "stop")
    assert "no cluster to stop" in capsys.readouterr().out


def test_unload_stops_what_the_magics_started(ip: InteractiveShell) -> None:
    ip.run_line_magic("celerynb", "start -n 1")
    local = celerynb.current()
    assert isinstance(local, celerynb.LocalCluster)
    pids = local.pids
    assert pids and all(_alive(p) for p in pids)
    ip.run_line_magic("unload_ext", "celerynb")
    assert local.closed
    _wait_dead(pids)
    ip.run_line_magic("load_ext", "celerynb")  # the fixture unloads it again


def test_unload_leaves_other_clusters(ip: InteractiveShell, cluster: celerynb.LocalCluster) -> None:
    ip.run_line_magic("unload_ext", "celerynb")
    assert not cluster.closed
    ip.run_line_magic("load_ext", "celerynb")


def test_connect(
    ip: InteractiveShell,
    cluster: celerynb.LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``connect URL`` uses an existing deployment: here the session cluster's broker."""
    ip.run_line_magic("celerynb", "start -n 1")
    started = celerynb.current()
    assert isinstance(started, celerynb.LocalCluster)
    monkeypatch.setenv("CELERYNB_SECRET", cluster.settings.secret)
    ip.run_line_magic("celerynb", f"connect {cluster.settings.broker_url}")
    out = capsys.readouterr().out
    assert "celerynb: stopped <LocalCluster closed" in out  # the one the magics started
    assert "celerynb: connected: <Cluster connected broker='redis://:***@127.0.0.1" in out
    assert started.closed
    remote = celerynb.current()
    assert remote is not None and remote.kind == "remote"
    ip.run_line_magic("celerynb", "status")
    status = capsys.readouterr().out
    assert "cluster:  remote (connected)" in status
    assert f"  {cluster.hostname}: concurrency {cluster.concurrency}" in status
    assert "chunks:   0 queued, 0 running" in status
    assert celerynb.cmap(lambda xs: [-x for x in xs], [1, 2], progress=False) == [-1, -2]

    ip.run_line_magic("celerynb", "restart")
    assert "reconnected" in capsys.readouterr().out
    again = celerynb.current()
    assert again is not remote and again is not None and again.kind == "remote"
    ip.run_line_magic("celerynb", "stop")
    assert "disconnected from" in capsys.readouterr().out
    assert not cluster.closed  # the deployment itself keeps running


def test_connect_failure_is_a_clean_error(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="cannot connect"):
        ip.run_line_magic("celerynb", "connect redis://127.0.0.1:1/0")
    assert celerynb.current() is None


def test_start_detach_and_connect_without_url(
    ip: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``start --detach`` starts the detached cluster (a process of its own) and connects;
    ``connect`` with no URL finds it."""
    monkeypatch.setenv("CELERYNB_STATE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match=r"cannot connect.*celerynb cluster start"):
        ip.run_line_magic("celerynb", "connect")
    ip.run_line_magic("celerynb", "start --detach -n 1")
    try:
        out = capsys.readouterr().out
        assert "celerynb cluster started" in out and "connected" in out, out
        cluster = celerynb.current()
        assert cluster is not None and cluster.kind == "remote"
        pids = _state_pids(tmp_path)
        assert all(_alive(p) for p in pids)
        assert all(psutil.Process(p).ppid() != os.getpid() for p in pids)  # not our children
        ip.run_line_magic("celerynb", "stop")
        assert all(_alive(p) for p in pids), "disconnecting leaves the detached cluster running"
        ip.run_line_magic("celerynb", "connect")
        assert celerynb.current() is not None
        assert celerynb.cmap(len, [[1, 2], [3]], chunks=2, progress=False) == [1, 1]
    finally:
        current = celerynb.current()
        if current is not None:
            current.close()
        done = subprocess.run(
            [sys.executable, "-m", "celerynb.cli", "cluster", "stop"], capture_output=True
        )
        assert done.returncode == 0
    _wait_dead(pids)


def _state_pids(state: Path) -> list[int]:
    data = json.loads((state / "cluster.json").read_text())
    return [data["redis_pid"], data["worker_pid"]]
