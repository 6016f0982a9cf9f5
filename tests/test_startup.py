"""Start-up of the embedded cluster: the worker reports ready on a pipe, not through pings."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import forget_queue

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.plane.records import ReadyKind, ReadyLine
from celerynb.procs import ReadyWaiter, die_with_parent
from celerynb.settings import ENV_EMBEDDED, ENV_READY_FD, Settings
from celerynb.worker.embedded import await_redis, ready_pipe


def _double(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


def pool(pid: int) -> bytes:
    """A pool process's report, as the worker writes it."""
    return ReadyLine(ReadyKind.POOL, pid=pid).encode().encode() + b"\n"


# the main process's report
MAIN_LINE = (
    Settings("redis://:pw@h:1/0", secret="s").ready_line("node@host").encode().encode() + b"\n"
)


# -- the driver's side of the pipe ----------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_ready_once_main_and_every_pool_process_reported(pipe: tuple[int, int]) -> None:
    r, w = pipe
    waiting = ReadyWaiter(r, children=2)
    os.write(w, pool(11) + MAIN_LINE)
    assert not waiting.wait(5)  # one pool process still missing
    os.write(w, pool(12)[:10])
    assert not waiting.wait(5)  # half a line is no report
    os.write(w, pool(12)[10:])
    assert waiting.wait(5)
    assert waiting.pids == {11, 12} and waiting.main_ready and not waiting.closed


def test_ready_when_the_pipe_closes_after_the_main_report(pipe: tuple[int, int]) -> None:
    r, w = pipe
    waiting = ReadyWaiter(r, children=2)
    os.write(w, MAIN_LINE + pool(11))
    os.close(w)  # the other pool process was replaced before it could report
    while not waiting.closed:
        waiting.wait(5)
    assert waiting.ready


def test_not_ready_when_the_pipe_closes_without_a_main_report(pipe: tuple[int, int]) -> None:
    r, w = pipe
    waiting = ReadyWaiter(r, children=1)
    os.write(w, pool(11))
    os.close(w)
    while not waiting.closed:
        waiting.wait(5)
    assert not waiting.ready
    assert not waiting.wait(0)


def test_wait_returns_after_its_timeout_without_news(pipe: tuple[int, int]) -> None:
    waiting = ReadyWaiter(pipe[0], children=1)
    assert not waiting.wait(0.01)
    assert not waiting.closed


# -- the worker's side -----------------------------------------------------------


def test_ready_pipe_accepts_only_an_open_pipe(pipe: tuple[int, int], tmp_path: Path) -> None:
    assert ready_pipe(str(pipe[1])) == pipe[1]
    with open(tmp_path / "file", "w") as f:
        assert ready_pipe(str(f.fileno())) is None  # never write into someone else's file
    assert ready_pipe("") is None
    assert ready_pipe("not-a-number") is None
    closed_r, closed_w = os.pipe()
    os.close(closed_r)
    os.close(closed_w)
    assert ready_pipe(str(closed_w)) is None


def test_await_redis_returns_once_something_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        await_redis(f"redis://:pw@127.0.0.1:{listener.getsockname()[1]}/0", timeout=30)


def test_await_redis_gives_up_after_its_timeout() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        await_redis(f"redis://127.0.0.1:{unused.getsockname()[1]}/0", timeout=0.05)
    await_redis("amqp://guest@127.0.0.1:1//", timeout=30)  # not Redis: no wait at all


_FREEZE = """
import gc
from celerynb.worker.embedded import freeze_before_fork
assert gc.get_freeze_count() == 0
freeze_before_fork()
frozen = gc.get_freeze_count()
assert frozen > 0
garbage = [[] for _ in range(1000)]
freeze_before_fork()  # a later fork (a replaced pool process) freezes nothing more
assert gc.get_freeze_count() == frozen
"""


def test_freeze_before_fork_freezes_once() -> None:
    subprocess.run([sys.executable, "-c", _FREEZE], check=True, timeout=60)


def test_pool_processes_start_with_the_startup_objects_frozen(
    cluster: celerynb.LocalCluster,
) -> None:
    def frozen(xs: list[int]) -> list[int]:
        import gc

        return [gc.get_freeze_count() for _ in xs]

    counts = celerynb.cmap(frozen, [1, 2, 3, 4], chunks=4, cluster=cluster, progress=False)
    assert all(n > 0 for n in counts)


def test_embedded_worker_reports_its_pool_and_then_ready(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    """``python -m celerynb.ready`` against the session cluster's Redis, on its own queue."""
    settings = Settings(cluster.settings.broker_url, secret=new_secret())
    r, w = os.pipe()
    env = dict(os.environ, **settings.env(), C_FORCE_ROOT="1", PYTHONPATH=os.getcwd())
    env[ENV_EMBEDDED], env[ENV_READY_FD] = "1", str(w)
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celerynb.worker.embedded", "--hostname", "startup-test@here",
             "--concurrency", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(w,),
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
    os.close(w)
    waiting = ReadyWaiter(r, children=2)
    deadline = time.monotonic() + 60
    try:
        while not waiting.wait(1) and not waiting.closed and time.monotonic() < deadline:
            pass
        log = (tmp_path / "worker.log").read_text()
        assert proc.poll() is None and waiting.ready and not waiting.closed, log
        pool = {p.pid for p in psutil.Process(proc.pid).children()}
        assert waiting.pids == pool and len(pool) == 2
        assert select.select([r], [], [], 60)[0] and os.read(r, 100) == b""  # all closed it
    finally:
        os.close(r)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        forget_queue(settings.broker_url, settings.queue)


def test_local_cluster_returns_with_its_pool_up() -> None:
    with celerynb.LocalCluster(n_workers=2) as c:
        assert c.worker_proc is not None
        assert len(psutil.Process(c.worker_proc.pid).children()) == 2
        assert celerynb.cmap(_double, [1, 2, 3], cluster=c, progress=False) == [2, 4, 6]


_SILENT_WORKER = """
import os
fd = os.environ.pop("CELERYNB_READY_FD", None)
if fd:  # this worker will never report on the pipe
    os.close(int(fd))
    print("silent-worker: closed the ready pipe", flush=True)
"""


def test_a_worker_that_never_reports_is_pinged_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the ready pipe closes without a report, start-up falls back to pinging."""
    shadow = tmp_path / "silent"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(textwrap.dedent(_SILENT_WORKER))
    monkeypatch.syspath_prepend(str(shadow))  # LocalCluster passes sys.path to the worker
    with celerynb.LocalCluster(n_workers=1, timeout=60) as c:
        assert "silent-worker: closed the ready pipe" in c.worker_log()
        assert celerynb.cmap(_double, [1, 2, 3], cluster=c, progress=False) == [2, 4, 6]
