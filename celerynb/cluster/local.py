"""The embedded cluster: a private redis-server and one prefork worker, started and stopped here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import redis

from .. import celery_compat
from ..errors import ClusterError
from ..plane.codec import new_secret
from ..plane.shm import DEFAULT_ROOT, ShmStore
from ..procs import (
    ReadyWaiter,
    alive,
    children,
    find_redis_server,
    free_port,
    spawn,
    stop_and_remove,
    stop_procs,
    tail,
    usable_cores,
)
from ..settings import Liveness, Places, Settings, WorkerEnv, mask_url
from . import registry
from .connection import Cluster


class EmbeddedProcesses:
    """redis-server and the worker of one embedded cluster, with their private temp dir.

    Everything started is stopped (and the dir removed) by ``stop()``, at
    interpreter exit, or, on Linux, when this process dies.
    """

    def __init__(self, concurrency: int, timeout: float) -> None:
        self.concurrency, self.timeout = concurrency, timeout
        self.dir = Path(tempfile.mkdtemp(prefix="celerynb-"))
        self.procs: list[subprocess.Popen[bytes]] = []  # the finalizer stops what is in here
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.worker_proc: subprocess.Popen[bytes] | None = None
        self.hostname = ""
        self._finalizer = weakref.finalize(self, stop_and_remove, self.dir, self.procs)

    def __repr__(self) -> str:
        return f"<EmbeddedProcesses {self.dir} pids={self.pids}>"

    def start(self, secret: str, shm: ShmStore | None) -> tuple[Settings, int]:
        """Start redis-server and the worker side by side; the settings and the worker's
        ready pipe (read end). A port taken meanwhile means a new try."""
        server = find_redis_server()
        log = self.dir / "redis.log"
        password = new_secret()
        for _ in range(5):
            port = free_port()
            settings = Settings(f"redis://:{password}@127.0.0.1:{port}/0", secret=secret)
            self._start_redis(server, port, password)
            ready_fd = self.start_worker(settings, shm)
            if self._redis_answers(port, password):
                return settings, ready_fd
            os.close(ready_fd)
            self._stop([self.worker_proc, self.redis_proc], grace=0)
            if "Address already in use" not in tail(log):
                raise ClusterError(
                    f"redis-server ({server}) did not start; its log ends with:\n{tail(log)}"
                )
        raise ClusterError("could not find a free port for redis-server after 5 tries")

    def _start_redis(self, server: str, port: int, password: str) -> None:
        conf = self.dir / "redis.conf"
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass "{password}"\n'
            f'save ""\nappendonly no\ndir "{self.dir}"\nlogfile "{self.dir / "redis.log"}"\n'
            "client-output-buffer-limit pubsub 0 0 0\n"
        )
        conf.chmod(0o600)
        # its own session: a kernel interrupt (SIGINT to the kernel's process
        # group, as jupyter_client sends it) must not stop the redis-server
        self.redis_proc = spawn(
            [server, str(conf)], stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True
        )
        self.procs.append(self.redis_proc)

    def _redis_answers(self, port: int, password: str, timeout: float = 10.0) -> bool:
        """Whether our redis-server answers PING within ``timeout`` s (False: it exited)."""
        assert self.redis_proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        try:
            while time.monotonic() < deadline and self.redis_proc.poll() is None:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    time.sleep(0.005)
            return False
        finally:
            client.close()

    def start_worker(self, settings: Settings, shm: ShmStore | None) -> int:
        """Start the worker process; the read end of the pipe it reports ready on."""
        env = dict(os.environ)
        env.update(settings.env())
        env["C_FORCE_ROOT"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.hostname = f"celerynb-local-{os.getpid()}-{settings.key_id[:6]}@{socket.gethostname()}"
        # Celery's CLI is skipped (its import alone costs ~0.15 s); the flags
        # --without-mingle --without-gossip --without-heartbeat are set there
        args = [sys.executable, "-m", "celerynb.worker.embedded", "--hostname", self.hostname,
                "--concurrency", str(self.concurrency), "--loglevel", "WARNING"]  # fmt: skip
        ready_r, ready_w = os.pipe()
        shm_dir = str(shm.directory) if shm is not None else ""
        env.update(WorkerEnv(True, shm_dir, die_with_parent=True, ready_fd=ready_w).env())
        try:
            with open(self.dir / "worker.log", "ab") as log:
                self.worker_proc = spawn(
                    args,
                    env=env,
                    cwd=os.getcwd(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(ready_w,),
                )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self.procs.append(self.worker_proc)
        return ready_r

    def wait_ready(self, ready_fd: int, ping: Cluster) -> None:
        """Wait until the worker consumes and its pool processes are up (closes ``ready_fd``).

        The worker reports on the pipe; should the pipe close without that, it is pinged.
        """
        deadline = time.monotonic() + self.timeout
        try:
            waiting = ReadyWaiter(ready_fd, self.concurrency)
            while time.monotonic() < deadline:
                self._check_alive()
                if waiting.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                    return
                if waiting.closed:  # no report coming: fall back to pinging
                    break
            if not self._pinged(ping, max(deadline, time.monotonic() + 0.5)):
                raise ClusterError(
                    f"the celerynb worker did not answer a ping within {self.timeout:.0f} s; "
                    f"its log ends with:\n{self.worker_log()}"
                )
        finally:
            os.close(ready_fd)

    def _check_alive(self) -> None:
        assert self.worker_proc is not None
        if self.worker_proc.poll() is not None:
            raise ClusterError(
                f"the celerynb worker exited with code {self.worker_proc.returncode} "
                f"during start-up; its log ends with:\n{self.worker_log()}"
            )

    def _pinged(self, cluster: Cluster, deadline: float) -> bool:
        while True:
            self._check_alive()
            try:
                if cluster.app.control.ping([self.hostname], timeout=0.1, limit=1):
                    return True
            except Exception:  # the broker may drop the first connection
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                return False

    def worker_died(self) -> bool:
        return self.worker_proc is not None and self.worker_proc.poll() is not None

    def _stop(self, procs: list[subprocess.Popen[bytes] | None], grace: float = 3.0) -> None:
        stop_procs([p for p in procs if p is not None], grace)

    def worker_log(self, lines: int = 30) -> str:
        return tail(self.dir / "worker.log", lines)

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes started here that are still alive (pool children too)."""
        pids = [p.pid for p in (self.redis_proc, self.worker_proc) if p and p.poll() is None]
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            pids += [pid for pid in children(self.worker_proc.pid) if alive(pid)]
        return pids

    def stop(self) -> None:
        """Stop everything and remove the temp dir (idempotent)."""
        self._finalizer()


class LocalCluster(Cluster):
    """An embedded cluster: a private redis-server and one prefork Celery worker.

    ``n_workers`` pool processes (default: one per usable core, respecting CPU
    affinity and cgroup quotas as in containers); ``timeout`` seconds
    (default 60) for start-up. Started on creation, stopped by ``close()``, on
    context exit, at interpreter exit, and (on Linux) when this process dies.
    """

    kind = "local"
    elastic = False  # one worker, watched as a process: no heartbeats, no spare messages

    def __init__(self, n_workers: int | None = None, *, timeout: float = 60.0) -> None:
        if n_workers is not None and (
            isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1
        ):
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        self.concurrency = n_workers or usable_cores()
        self.timeout = timeout
        self.generation = 0  # bumped each time a dead worker is replaced
        self.liveness = Liveness.from_env()
        self._restart_lock = threading.Lock()
        self._boot()  # makes the Cluster part too (Cluster._open), as restart() does

    def _boot(self) -> None:
        """Start redis-server and the worker, connect, wait until the worker is ready."""
        started, secret = time.perf_counter(), new_secret()
        self._shm_store = _shared_memory(secret)
        self._procs = procs = EmbeddedProcesses(self.concurrency, self.timeout)
        try:
            settings, ready_fd = procs.start(secret, self._shm_store)
            self._open(settings, self._shm_store)
            procs.wait_ready(ready_fd, self)
        except BaseException:
            self._shutdown(procs)
            raise
        self.startup_seconds = time.perf_counter() - started
        registry.set_current(self)

    def _shutdown(self, procs: EmbeddedProcesses) -> None:
        procs.stop()
        if self._shm_store is not None:
            self._shm_store.close()

    # -- facts ----------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self._procs.dir

    @property
    def hostname(self) -> str:
        return self._procs.hostname

    @property
    def redis_proc(self) -> subprocess.Popen[bytes] | None:
        return self._procs.redis_proc

    @property
    def worker_proc(self) -> subprocess.Popen[bytes] | None:
        return self._procs.worker_proc

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this cluster started that are still alive."""
        return self._procs.pids

    def worker_log(self, lines: int = 30) -> str:
        """The last lines of the worker's log."""
        return self._procs.worker_log(lines)

    def workers(self, max_age: float = 0.5) -> dict[str, int]:
        return {self.hostname: self.concurrency}

    # -- lifecycle ------------------------------------------------------------------------------
    def ensure_worker(self) -> bool:
        """If the worker process died (killed, crashed), start a new one and return True.

        Its reservations are dropped from the broker; the supervisor has the
        calls in flight re-send what it held.
        """
        with self._restart_lock:
            if self.closed or not self._procs.worker_died():
                return False
            proc = self._procs.worker_proc
            stop_procs([proc] if proc is not None else [], grace=0)  # what is left of its pool
            self._procs.procs.remove(proc)  # type: ignore[arg-type]
            self.store.delete(celery_compat.UNACKED_KEYS)  # its reservations
            self._procs.wait_ready(self._procs.start_worker(self.settings, self.shm), self)
            self.generation += 1
            return True

    def restart(self) -> None:
        """Stop everything and start afresh (new Redis, new worker, same size)."""
        self.close()
        self._boot()

    def close(self) -> None:
        """Stop the worker and redis-server and remove the temp dir (idempotent)."""
        super().close()
        self._shutdown(self._procs)

    def __enter__(self) -> LocalCluster:
        return self

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        if self._procs.worker_died():
            return "worker died"
        return "running"

    def __repr__(self) -> str:
        broker = mask_url(self.settings.broker_url) if hasattr(self, "settings") else "-"
        return f"<LocalCluster {self.state} workers={self.concurrency} broker={broker!r}>"


def _shared_memory(secret: str) -> ShmStore | None:
    """Where big data goes: files on a tmpfs (``CELERYNB_SHM_ROOT``, default /dev/shm;
    ``off``: none), if that is a writable tmpfs; else None (through Redis)."""
    places = Places.from_env()
    root = places.shm_root or str(DEFAULT_ROOT)
    if places.shm_off or not ShmStore.available(root):
        return None
    return ShmStore.create(secret, root)
