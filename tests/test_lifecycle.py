"""Starting and stopping embedded clusters: no process or temp dir is left behind.

These tests start their own LocalClusters (in this process or in a
subprocess) and check, by PID, that everything they started is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

import celerynb
import celerynb.cluster.registry as registry

BOUND = 15.0  # generous "does not hang" bound
SYSTEM_REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def keep_current() -> Iterator[None]:
    """Clusters made here become current: give the previous one back afterwards."""
    previous = celerynb.current()
    yield
    if previous is not None and not previous.closed:
        registry.set_current(previous)


def processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still alive (psutil checks create times: PID reuse is safe)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def assert_gone(procs: list[psutil.Process], within: float = BOUND) -> None:
    deadline = time.monotonic() + within
    while running(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(procs)
    for proc in left:  # do not leak them into the next tests: stop them, by PID
        proc.kill()
    assert not left, f"processes survived: {[(p.pid, p.name()) for p in left]}"


def run_script(code: str, env: dict[str, str] | None = None, timeout: float = 90) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def check_works(cluster: celerynb.Cluster) -> None:
    out = celerynb.cmap(lambda xs: [x * 3 for x in xs], list(range(10)), cluster=cluster,
                        progress=False)  # fmt: skip
    assert out == [x * 3 for x in range(10)]


# -- in this process ------------------------------------------------------------


def test_start_and_stop_twice() -> None:
    seen: set[int] = set()
    for _ in range(2):
        cluster = celerynb.LocalCluster(n_workers=2)
        assert cluster.state == "running"
        assert cluster.dir.is_dir()
        check_works(cluster)
        pids = cluster.pids
        assert cluster.redis_proc is not None and cluster.worker_proc is not None
        assert cluster.redis_proc.pid in pids and cluster.worker_proc.pid in pids
        # the two pool processes are children of the worker, and are listed too
        children = [p.pid for p in psutil.Process(cluster.worker_proc.pid).children()]
        assert len(children) == 2 and set(children) <= set(pids), (children, pids)
        assert len(pids) == 4
        assert not seen & set(pids)
        seen |= set(pids)
        procs = processes(pids)
        directory = cluster.dir
        cluster.close()
        assert cluster.closed and cluster.state == "closed"
        assert_gone(procs)
        assert not directory.exists()
        assert cluster.pids == []
        cluster.close()  # idempotent
        assert "closed" in repr(cluster)


def test_context_manager_closes_even_on_error() -> None:
    with pytest.raises(ZeroDivisionError), celerynb.LocalCluster(n_workers=1) as cluster:
        check_works(cluster)
        procs = processes(cluster.pids)
        directory = cluster.dir
        assert len(procs) == 3
        1 / 0  # noqa: B018
    assert cluster.closed
    assert_gone(procs)
    assert not directory.exists()
    with pytest.raises(celerynb.ClusterError, match="closed"):
        celerynb.cmap(len, [1, 2], cluster=cluster, progress=False)


def test_current_follows_the_last_cluster_and_clusters_are_independent() -> None:
    with celerynb.LocalCluster(n_workers=1) as first:
        assert celerynb.current() is first
        assert celerynb.default_cluster() is first  # does not start another
        with celerynb.LocalCluster(n_workers=1) as second:
            assert celerynb.current() is second
            assert first.settings.queue != second.settings.queue
            assert first.settings.secret != second.settings.secret
            assert not set(first.pids) & set(second.pids)
            check_works(first)
            # cmap without cluster= uses the current one
            future = celerynb.cmap_async(lambda xs: xs, [1, 2, 3], progress=False)
            assert future.cluster is second
            assert future.result(timeout=BOUND) == [1, 2, 3]
            procs_second = processes(second.pids)
        assert_gone(procs_second)
        assert celerynb.current() is None  # a closed cluster is never current
        check_works(first)  # closing one cluster leaves the other alone
        assert first.state == "running"
    assert first.closed
    assert celerynb.current() is None


def test_restart_replaces_every_process() -> None:
    cluster = celerynb.LocalCluster(n_workers=1)
    try:
        old = processes(cluster.pids)
        old_dir = cluster.dir
        cluster.restart()
        assert cluster.state == "running"
        assert_gone(old)
        assert not old_dir.exists()
        assert not {p.pid for p in old} & set(cluster.pids)
        check_works(cluster)
    finally:
        procs = processes(cluster.pids)
        cluster.close()
        assert_gone(procs)


def test_closing_the_cluster_ends_a_running_call() -> None:
    # Was: Cluster.close() (celerynb/cluster.py) closes the Redis client and stops the
    # servers under a running MapFuture's poll thread. The call then fails with a bare
    # `ValueError: I/O operation on closed file` (poll blocked in BLPOP) or keeps polling
    # a dead store for broker_timeout = 30 s before a ClusterError. The fix: the
    # cluster keeps a WeakSet of its running futures and cancels them in close() before
    # dropping connections (CancelledError "the cluster was closed"), and
    # MapFuture._poll_loop stops with that error when self.cluster.closed.
    cluster = celerynb.LocalCluster(n_workers=1)
    procs = processes(cluster.pids)
    try:
        future = celerynb.cmap_async(
            lambda xs: (time.sleep(30), xs)[1], [1, 2], chunks=2, cluster=cluster, progress=False
        )
        time.sleep(1.0)
    finally:
        cluster.close()
    assert_gone(procs)
    started = time.monotonic()
    with pytest.raises(celerynb.CelerynbError) as info:
        future.result(timeout=BOUND)
    assert time.monotonic() - started < BOUND
    assert "closed" in str(info.value)


def test_bad_n_workers() -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_workers must be a positive int"):
            celerynb.LocalCluster(n_workers=bad)  # type: ignore[arg-type]


# -- start-up failures report the worker's log ---------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make LocalCluster's temp dirs here, so we can check they are removed."""
    directory = tmp_path / "clusters"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def _new_children(before: set[int]) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


def _sabotage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """A module shadowing cloudpickle for the worker only (this process imported it already).

    LocalCluster passes this process's sys.path to the worker as PYTHONPATH.
    """
    fake = tmp_path / "sabotage"
    fake.mkdir()
    (fake / "cloudpickle.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(fake))


def test_worker_that_dies_at_startup_reports_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_tmp: Path
) -> None:
    _sabotage(tmp_path, monkeypatch, 'raise ImportError("sabotaged-by-the-test")\n')
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.LocalCluster(n_workers=1, timeout=60)
    assert time.monotonic() - started < 30
    msg = str(info.value)
    assert "exited with code" in msg and "during start-up" in msg
    assert "sabotaged-by-the-test" in msg  # the tail of the worker's log
    assert_gone(_new_children(before))
    assert list(private_tmp.iterdir()) == []


def test_worker_that_hangs_at_startup_times_out_with_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_tmp: Path
) -> None:
    _sabotage(
        tmp_path,
        monkeypatch,
        """
        import sys, time
        print("stuck-marker: the worker hangs here", file=sys.stderr, flush=True)
        time.sleep(600)
        """,
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.LocalCluster(n_workers=1, timeout=4)
    assert time.monotonic() - started < 30
    msg = str(info.value)
    assert "did not answer a ping within 4 s" in msg
    assert "stuck-marker" in msg
    assert_gone(_new_children(before))
    assert list(private_tmp.iterdir()) == []


# -- in a subprocess ------------------------------------------------------------

_PRINT_PIDS = """
import json, sys, time
import celerynb
cluster = celerynb.LocalCluster(n_workers=2)
assert celerynb.cmap(lambda xs: xs, [1, 2, 3], cluster=cluster, progress=False) == [1, 2, 3]
print(json.dumps({"pids": cluster.pids, "dir": str(cluster.dir)}), flush=True)
time.sleep(600)
"""


def test_no_orphans_when_the_driver_is_sigkilled() -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", _PRINT_PIDS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    info: dict[str, object] = {}
    try:
        assert driver.stdout is not None
        line = driver.stdout.readline()  # the script prints once the cluster works
        assert line, driver.stderr.read() if driver.stderr else "no output"
        info = json.loads(line)
        pids = info["pids"]
        assert isinstance(pids, list) and len(pids) == 4
        procs = processes(pids)
        assert len(running(procs)) == 4
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(BOUND)
        assert_gone(procs, within=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        if driver.stdout:
            driver.stdout.close()
        if driver.stderr:
            driver.stderr.close()
        # a SIGKILLed driver cannot remove its temp dir: do it for it
        if info.get("dir"):
            shutil.rmtree(str(info["dir"]), ignore_errors=True)


def test_cluster_started_by_current_stops_at_interpreter_exit() -> None:
    out = run_script(
        """
        import json, os
        import celerynb
        os.environ.pop("CELERYNB_BROKER_URL", None)
        assert celerynb.current() is None
        cluster = celerynb.default_cluster()
        assert isinstance(cluster, celerynb.LocalCluster), cluster
        assert celerynb.current() is cluster
        assert celerynb.cmap(lambda xs: [x + 1 for x in xs], [1, 2], progress=False) == [2, 3]
        print(json.dumps({"pids": cluster.pids, "dir": str(cluster.dir)}))
        # no close(): the interpreter's exit must stop it
        """
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert len(info["pids"]) >= 3
    assert_gone(processes(info["pids"]), within=10)
    assert not Path(info["dir"]).exists()


def test_current_connects_when_broker_url_is_set() -> None:
    try:
        redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {SYSTEM_REDIS}")
    env = dict(os.environ, CELERYNB_BROKER_URL=SYSTEM_REDIS, CELERYNB_SECRET="s3cret-for-test")
    out = run_script(
        """
        import celerynb
        assert celerynb.current() is None
        cluster = celerynb.default_cluster()
        assert type(cluster) is celerynb.Cluster and cluster.kind == "remote", cluster
        assert celerynb.current() is cluster
        print(repr(cluster))
        cluster.close()
        assert celerynb.current() is None
        """,
        env=env,
    )
    assert "<Cluster connected broker=" in out
    assert "s3cret-for-test" not in out
