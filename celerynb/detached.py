"""A detached local cluster: a redis-server and a worker that outlive any kernel.

``celerynb cluster start | status | stop`` (and ``%celerynb start --detach``).
Both processes run in their own sessions, owned by nobody but init once the
command that started them exits. The broker URL (with its password) and the
secret live in a 0600 state file in a 0700 directory, ``CELERYNB_STATE_DIR``
(default ``$XDG_STATE_HOME/celerynb``, i.e. ``~/.local/state/celerynb``);
``celerynb.connect()`` with no URL finds it. As the embedded cluster, it
listens on 127.0.0.1 only and asks for a password.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ClusterError
from .plane.codec import new_secret
from .plane.records import ReadyKind, ReadyLine
from .plane.store import StoreError, ping
from .procs import alive, find_redis_server, free_port, tail, usable_cores
from .settings import ENV_SECRET, Places, mask_url


def state_dir() -> Path:
    """``CELERYNB_STATE_DIR``, else ``$XDG_STATE_HOME/celerynb`` (``~/.local/state/celerynb``)."""
    return Places.from_env().state_dir


def state_file() -> Path:
    return state_dir() / "cluster.json"


@dataclass(frozen=True)
class DetachedCluster:
    """What a running detached cluster is: read from (and written to) the state file."""

    broker_url: str
    secret: str
    redis_pid: int
    worker_pid: int
    concurrency: int
    dir: str
    started: float

    def __repr__(self) -> str:
        state = "running" if self.running() else "not running"
        return (
            f"<DetachedCluster {state} workers={self.concurrency} "
            f"broker={mask_url(self.broker_url)!r} pids={[self.redis_pid, self.worker_pid]}>"
        )

    @classmethod
    def load(cls) -> DetachedCluster | None:
        """The detached cluster of this user's state directory, or None if there is none."""
        try:
            data = json.loads(state_file().read_text())
            return cls(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise ClusterError(
                f"the state file {state_file()} is unreadable ({exc}): remove it, or run "
                "`celerynb cluster stop`"
            ) from None

    def save(self) -> None:
        path = state_file()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, path)

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether its redis-server answers a PING."""
        try:
            ping(self.broker_url, timeout)
        except StoreError:
            return False
        return True

    def running(self) -> bool:
        """Both processes alive and the server answering."""
        return alive(self.redis_pid) and alive(self.worker_pid) and self.answers()

    def log(self, lines: int = 30) -> str:
        """The last lines of the worker's log."""
        return tail(Path(self.dir) / "worker.log", lines)

    def reported_ready(self, hostname: str) -> bool:
        """Whether the worker ``hostname`` says in its log that it consumes the queue."""
        reports = (ReadyLine.decode(line) for line in self.log(200).splitlines())
        return any(r and r.kind is ReadyKind.WORKER and r.name == hostname for r in reports)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the worker (warm shutdown, then killed after ``grace`` s), then the server;
        remove the state file and the directory."""
        _end_group(self.worker_pid, grace)
        _end_group(self.redis_pid, 3.0)
        with contextlib.suppress(FileNotFoundError):
            state_file().unlink()
        shutil.rmtree(self.dir, ignore_errors=True)


def _end_group(pid: int, grace: float) -> None:
    """SIGTERM the process group ``pid`` leads; SIGKILL what is left after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while alive(pid) and time.monotonic() < deadline:  # reaped by whoever is its parent
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def _daemon(args: list[str], cwd: Path, log: Path, env: dict[str, str]) -> int:
    """Start ``args`` in a session of its own, output to ``log``; its pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def start(n_workers: int | None = None, timeout: float = 60.0) -> DetachedCluster:
    """Start the detached cluster (``n_workers`` pool processes, default one per core);
    the running one if there is one already."""
    found = DetachedCluster.load()
    if found is not None:
        if found.running():
            return found
        found.stop(grace=0)  # left over (the machine restarted, or it was killed)
    home = state_dir()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.chmod(0o700)
    directory = home / "cluster"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    password, port = new_secret(), free_port()
    conf = directory / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f'port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass "{password}"\n'
            f'save ""\nappendonly no\ndir "{directory}"\n'
        )
    env = dict(os.environ)
    redis_pid = _daemon([find_redis_server(), str(conf)], directory, directory / "redis.log", env)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    concurrency = n_workers or usable_cores()
    env[ENV_SECRET] = secret = new_secret()
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    hostname = f"celerynb-detached-{port}@{socket.gethostname()}"
    args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", url, "--hostname", hostname,
            "--concurrency", str(concurrency), "--loglevel", "WARNING"]  # fmt: skip
    cluster = DetachedCluster(url, secret, redis_pid, 0, concurrency, str(directory), time.time())
    if not _wait(lambda: cluster.answers(0.2), redis_pid, timeout):
        cluster.stop(grace=0)
        raise ClusterError(
            f"redis-server did not start; its log ends with:\n{tail(directory / 'redis.log')}"
        )
    worker_pid = _daemon(args, Path.cwd(), directory / "worker.log", env)
    cluster = DetachedCluster(
        url, secret, redis_pid, worker_pid, concurrency, str(directory), cluster.started
    )
    cluster.save()
    if not _wait(lambda: cluster.reported_ready(hostname), worker_pid, timeout):
        log = cluster.log()
        cluster.stop(grace=0)
        raise ClusterError(f"the detached worker did not start; its log ends with:\n{log}")
    return cluster


def _wait(ready: Callable[[], bool], pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if ready():
            return True
        time.sleep(0.05)
    return False
