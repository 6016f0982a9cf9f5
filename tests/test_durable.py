"""Named calls outlive their kernel; the detached cluster outlives every kernel.

Real `celerynb cluster start` processes in a temp state dir, real kernels
(jupyter_client) SIGKILLed mid-call, and real `celerynb worker` processes on
the machine's Redis that die and are replaced while no driver watches.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import redis
from support import SYSTEM_REDIS, Kernel, WorkerProcess, forget_queue, system_redis_available

import celerynb
from celerynb.errors import ClusterError
from celerynb.plane.codec import new_secret
from celerynb.plane.keys import CallKeys, QueueKeys
from celerynb.settings import Settings

CLI = [sys.executable, "-m", "celerynb.cli", "cluster"]


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CELERYNB_STATE_DIR=str(state))
    env.pop("CELERYNB_BROKER_URL", None)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def pids_of(state: Path) -> list[int]:
    data = json.loads((state / "cluster.json").read_text())
    main = [data["redis_pid"], data["worker_pid"]]
    return main + [c.pid for c in psutil.Process(data["worker_pid"]).children(recursive=True)]


@pytest.fixture
def detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A detached cluster (2 pool processes) in a temp state dir; stopped, and checked to
    leave nothing behind, at the end."""
    state = tmp_path / "state"
    monkeypatch.setenv("CELERYNB_STATE_DIR", str(state))
    monkeypatch.delenv("CELERYNB_BROKER_URL", raising=False)
    started = cli(state, "start", "-n", "2")
    assert started.returncode == 0, started.stdout + started.stderr
    pids = pids_of(state)
    before = celerynb.current()  # (the session's cluster, say: not this fixture's to close)
    try:
        yield state
    finally:
        current = celerynb.current()
        if current is not None and current is not before:  # a client of the detached one
            current.close()
        stopped = cli(state, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not (state / "cluster.json").exists() and not (state / "cluster").exists()
        assert not [p for p in pids if psutil.pid_exists(p) and _not_zombie(p)]


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the detached cluster ----------------------------------------------------------------------


def test_cluster_start_status_stop(detached: Path) -> None:
    state = detached
    assert cli(state, "status").returncode == 0
    again = cli(state, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert stat.S_IMODE((state / "cluster.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    data = json.loads((state / "cluster.json").read_text())
    url = data["broker_url"]
    assert "@127.0.0.1:" in url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):  # a password, as the embedded cluster
        redis.Redis(port=port).ping()
    cluster = celerynb.connect()  # finds it
    assert cluster.settings.broker_url == url
    assert celerynb.cmap(lambda c: c * 2, np.arange(10), progress=False).tolist() == list(
        range(0, 20, 2)
    )
    cluster.close()
    assert cli(state, "stop").returncode == 0
    assert cli(state, "status").returncode == 1
    assert cli(state, "stop").returncode == 0  # nothing left: still fine


def test_connect_without_url_or_detached_cluster_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERYNB_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("CELERYNB_BROKER_URL", raising=False)
    with pytest.raises(ClusterError, match=r"celerynb cluster start"):
        celerynb.connect()
    assert cli(tmp_path, "status").returncode == 1


def test_named_calls_need_a_cluster_that_outlives_the_kernel(
    cluster: celerynb.LocalCluster,
) -> None:
    with pytest.raises(ClusterError, match=r"embedded cluster.*celerynb cluster start"):
        celerynb.cmap(len, [[1]], cluster=cluster, name="x")
    with pytest.raises(ValueError, match=r"keep= and replace= are for named calls"):
        celerynb.cmap(len, [[1]], cluster=cluster, keep=60)
    with pytest.raises(TypeError, match=r"iterators cannot be named"):
        celerynb.cmap(len, iter([[1]]), cluster=cluster, name="x")


# -- a real kernel dies mid-call; another attaches -----------------------------------------------

SETUP = """
import time
import numpy as np, pandas as pd
import celerynb

RUNS = {runs!r}

def score(c):
    time.sleep(0.3)
    with open(RUNS, "a") as f:  # one line per chunk run, written when it ends
        f.write(f"{{c.index[0]}}\\n")
    return c.assign(y=c.x * 2 + 1)

df = pd.DataFrame({{"x": np.arange(4_000)}})
celerynb.connect()
"""


@pytest.mark.slow
def test_a_killed_kernels_named_call_is_attached_from_a_new_kernel(
    detached: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    setup = SETUP.format(runs=str(runs))
    first = Kernel(tmp_path, CELERYNB_STATE_DIR=str(detached))
    try:
        assert not first.run(setup).error
        pid = first.pid
        cell = first.run(
            """
            fut = celerynb.cmap_async(score, df, name="scores", chunks=40)
            while fut._call.snapshot().chunks_done < 8 and not fut.done():
                time.sleep(0.05)
            fut.done() and fut.result()
            """
        )
        assert not cell.error, cell.error
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        first.close()
    second = Kernel(tmp_path, CELERYNB_STATE_DIR=str(detached))
    try:
        assert not second.run(setup).error
        listed = second.run(
            "found = celerynb.calls(); print([(c.name, c.state, c.chunks_done) for c in found])"
        )
        assert not listed.error, listed.error
        name, state, done = eval(listed.stdout.strip())[0]
        assert name == "scores" and state in ("running", "finished") and done >= 8
        cell = second.run(
            """
            t = time.perf_counter()
            fut = celerynb.attach("scores")
            attached = time.perf_counter() - t
            out = fut.result(120)
            pd.testing.assert_frame_equal(out, df.assign(y=df.x * 2 + 1))
            print(f"{attached:.3f} {time.perf_counter() - t:.3f}")
            """
        )
        assert not cell.error, cell.error
        attach_s, result_s = map(float, cell.stdout.split())
        print(
            f"attach {attach_s * 1000:.0f} ms, result {result_s:.2f} s, "
            f"{time.monotonic() - killed_at:.1f} s after the kill"
        )
        assert cell.displays, "the progress display resumes"
        counts = collections.Counter(runs.read_text().split())
        assert len(counts) == 40 and set(counts.values()) == {1}, counts  # none ran twice
        rerun = second.run('again = celerynb.cmap(score, df, name="scores", chunks=40)')
        assert not rerun.error, rerun.error  # the same cell again: attached, nothing re-run
        assert len(runs.read_text().split()) == 40
        gone = second.run(
            """
            celerynb.forget("scores")
            print(sorted(k for k in celerynb.current().redis.keys("celerynb:{*")))
            print(celerynb.calls())
            """
        )
        assert gone.stdout.split("\n")[:2] == ["[]", "[]"], gone.stdout
    finally:
        second.close()


# -- the machine's Redis with `celerynb worker` processes ------------------------------------------

DRIVER = """
import os, sys, time
import numpy as np, pandas as pd
import celerynb

RUNS = sys.argv[3]

def score(c):
    time.sleep(0.3)
    with open(RUNS, "a") as f:
        f.write(f"{c.index[0]}\\n")
    return c.assign(y=c.x * 2 + 1)

celerynb.connect(sys.argv[1], secret=sys.argv[2])
df = pd.DataFrame({"x": np.arange(4_000)})
fut = celerynb.cmap_async(score, df, name=sys.argv[4], chunks=40, progress=False)
while fut._call.snapshot().chunks_done < 8 and not fut.done():
    time.sleep(0.05)
fut.done() and fut.result()
print("dying", flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if not system_redis_available():
        pytest.skip(f"no Redis at {SYSTEM_REDIS} (set CELERYNB_TEST_REDIS)")
    secret = new_secret()
    try:
        yield secret, tmp_path
    finally:
        current = celerynb.current()
        if current is not None:
            current.close()
        forget_queue(SYSTEM_REDIS, Settings(SYSTEM_REDIS, secret=secret).queue)


def _wait_for_workers(cluster: celerynb.Cluster, names: set[str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while not cluster.workers(max_age=0) or (names and not names & set(cluster.workers(0))):
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_a_dead_drivers_call_survives_a_worker_restart(deployment: tuple[str, Path]) -> None:
    secret, tmp = deployment
    runs, name = tmp / "runs.log", f"test-{uuid.uuid4().hex[:8]}"
    first = WorkerProcess(SYSTEM_REDIS, secret, tmp, "--hostname", f"a-{name}@%h")
    second: WorkerProcess | None = None
    try:
        script = tmp / "driver.py"
        script.write_text(textwrap.dedent(DRIVER))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run(
            [sys.executable, str(script), SYSTEM_REDIS, secret, str(runs), name],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == -signal.SIGKILL and "dying" in done.stdout, done.stderr
        first.stop()  # the worker dies too (mid-chunk), with nobody watching
        second = WorkerProcess(SYSTEM_REDIS, secret, tmp, "--hostname", f"b-{name}@%h")
        cluster = celerynb.connect(SYSTEM_REDIS, secret=secret)
        _wait_for_workers(cluster)
        call_id = cluster.redis.hget(QueueKeys(cluster.settings.queue).names, name).decode()
        deadline = time.monotonic() + 30  # long gone: the dead driver's sign of life expired
        while cluster.redis.exists(CallKeys(call_id).alive):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        t = time.perf_counter()
        future = celerynb.attach(name, progress=False)
        out = future.result(120)
        print(f"attach + the rest: {time.perf_counter() - t:.2f} s")
        df = pd.DataFrame({"x": np.arange(4_000)})
        pd.testing.assert_frame_equal(out, df.assign(y=df.x * 2 + 1))
        counts = collections.Counter(runs.read_text().split())
        assert len(counts) == 40 and set(counts.values()) == {1}, counts
        call = future.id
        future.forget()
        left = cluster.redis.keys(f"celerynb:{{{call}}}*")
        names = QueueKeys(cluster.settings.queue).names
        assert left == [] and cluster.redis.hget(names, name) is None
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_same_name_other_work_replace_and_keep(remote: celerynb.Cluster) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    data = list(range(100))
    try:
        first = celerynb.cmap(lambda xs: [x + 1 for x in xs], data, cluster=remote, name=name,
                              keep=timedelta(hours=30), progress=False)  # fmt: skip
        assert first == [x + 1 for x in data]
        found = {c.name: c for c in celerynb.calls(remote)}[name]
        assert found.state == "finished" and found.chunks_done == found.n_chunks
        keys = CallKeys(found.id)
        assert 29 * 3600 < remote.redis.ttl(keys.records) <= 30 * 3600
        with pytest.raises(ValueError, match=r"another function or data.*replace=True"):
            celerynb.cmap(lambda xs: [x + 2 for x in xs], data, cluster=remote, name=name)
        other = celerynb.cmap(lambda xs: [x + 2 for x in xs], data, cluster=remote, name=name,
                              replace=True, progress=False)  # fmt: skip
        assert other == [x + 2 for x in data]
        assert remote.redis.exists(keys.records, keys.meta) == 0  # the replaced one is gone

        def fails(xs: list[int]) -> list[int]:
            raise ValueError("no good")

        with pytest.raises(celerynb.ChunkError):
            celerynb.cmap(fails, data, cluster=remote, name=name, replace=True, progress=False)
        failed = {c.name: c for c in celerynb.calls(remote)}[name]
        assert failed.state == "failed" and "no good" in failed.message
        with pytest.raises(ClusterError, match="failed"):
            celerynb.attach(name, cluster=remote)
        # the same (failing) work again runs again: a failure is not kept as the result
        with pytest.raises(celerynb.ChunkError):
            celerynb.cmap(fails, data, cluster=remote, name=name, progress=False)
        with pytest.raises(KeyError, match="no call named 'nope'"):
            celerynb.attach("nope", cluster=remote)
    finally:
        celerynb.forget(name, cluster=remote)
    assert name not in {c.name for c in celerynb.calls(remote)}
