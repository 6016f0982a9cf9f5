"""The Celery app that workers run (``celerynb worker``, or ``celery -A celerynb.worker worker``).

The app exists at import (Celery's CLI looks it up); it is configured when
Celery first reads its configuration, from this process's :class:`Runtime`:
the settings (``CELERYNB_*`` variables, or what ``celerynb worker`` passes),
the heartbeat's timing and this process start's incarnation, built once, in
the main process before the pool forks. The tasks are in ``tasks``: one
draining task for every call's chunks and one reduce task.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import redis
from celery import Celery, signals

from .. import celery_compat, plane
from ..dispatch import CANCEL_GRACE_S
from ..plane import DataPlane, RedisPlane, ShmPlane, codec, scripts
from ..plane.codec import Job
from ..plane.keys import QueueKeys
from ..plane.records import WorkerInfo, WorkerState, worker_member
from ..plane.store import WorkerStore
from ..procs import die_with_parent
from ..settings import Liveness, Settings, Tuning, WorkerEnv, app_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What this worker process is, fixed when it starts.

    ``incarnation``: a fresh id for this process start (the pool processes,
    forked from it, share it). The worker's registry member and the owner of
    the slots it runs are ``<name>#<incarnation>``: a worker restarted under
    the same name is a new member, so the chunks the dead one held run again.
    """

    settings: Settings
    liveness: Liveness
    env: WorkerEnv
    incarnation: str
    started: float  # wall clock

    @classmethod
    def start(cls, settings: Settings | None = None) -> Runtime:
        """``settings`` (default: from the ``CELERYNB_*`` variables) and the rest of the
        environment, read now; ValueError if a setting is missing or wrong."""
        return cls(
            settings or Settings.from_env(),
            Liveness.from_env(),
            WorkerEnv.from_env(),
            secrets.token_hex(4),
            time.time(),
        )

    def member(self, name: str) -> str:
        """The registry member (and slot owner) of worker ``name`` in this process start."""
        return worker_member(name, self.incarnation)


_runtime: Runtime | None = None
_config_error = ""  # why the runtime could not be made (the worker refuses to start)


def start(settings: Settings | None = None) -> Runtime:
    """This process's runtime, made on the first call (see :meth:`Runtime.start`)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime.start(settings)
    return _runtime


def _configure() -> dict[str, object]:
    """The app's configuration, when Celery first needs it. Without usable settings it
    stays Celery's default, and ``worker_init`` stops the worker with the reason."""
    global _config_error
    try:
        found = start()
    except ValueError as exc:
        _config_error = str(exc)
        return {}
    return app_config(found.settings, embedded=found.env.embedded)


app: Celery = Celery("celerynb", set_as_current=False)
app.add_defaults(_configure)  # a promise: read when the configuration is first needed


class Context:
    """What one pool process keeps between tasks: its Redis client and store, data planes,
    recent jobs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (a freshly forked pool process makes its own clients)."""
        self._client: redis.Redis | None = None
        self._store: WorkerStore | None = None
        self._planes: dict[bool, DataPlane] = {}
        self.jobs: OrderedDict[str, Job] = OrderedDict()  # the last few calls' jobs
        scripts.forget_clients()

    @property
    def secret(self) -> str:
        return start().settings.secret

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            self._client = plane.connect(start().settings.backend_url)
        return self._client

    @property
    def store(self) -> WorkerStore:
        """The store's commands of the draining and reduce tasks, on this process's client."""
        if self._store is None:
            self._store = WorkerStore(self.redis, self.secret)
        return self._store

    def owner(self, name: str) -> str:
        """Who runs a slot: worker ``name`` in this process start (see :class:`Runtime`)."""
        return start().member(name)

    def plane(self, shm: bool) -> DataPlane:
        """The Redis plane, or (``shm``) the embedded cluster's shared-memory plane."""
        found = self._planes.get(shm)
        if found is None:
            limit = Tuning.from_env().max_payload
            if shm:
                from ..plane.shm import ShmStore

                directory = start().env.shm_dir
                if not directory:
                    raise RuntimeError(
                        "this worker has no CELERYNB_SHM_DIR: it is not the embedded one"
                    )
                store = ShmStore(directory, self.secret)
                found = ShmPlane(self.redis, self.secret, store, max_payload=limit)
            else:
                found = RedisPlane(self.redis, self.secret, max_payload=limit)
            self._planes[shm] = found
        return found

    def job(self, call: str, blob: bytes | None, worker: str) -> Job:
        """The call's job: kept from an earlier chunk, else loaded from ``blob``."""
        job = self.jobs.get(call)
        if job is None:
            if blob is None:
                raise LookupError("the call's function is gone from the store")
            job = self.jobs[call] = codec.load_job(self.secret, blob, worker)
            while len(self.jobs) > 8:
                self.jobs.popitem(last=False)
        return job


context = Context()

# Set by the main process when a warm shutdown begins; the pool processes (forked
# after this mapping was made) read it between chunks and hand their slots over.
_leaving = mmap.mmap(-1, 1)


def leaving() -> bool:
    """Whether this worker is in a warm shutdown: take no more chunks."""
    return _leaving[0] == 1


class Heartbeat(threading.Thread):
    """The main process's beat in the queue's worker registry (every ``heartbeat`` s).

    It beats while chunks run (the pool processes do the work), says when the
    worker is leaving, and takes it out of the registry on a clean shutdown.
    """

    def __init__(self, runtime: Runtime, hostname: str, concurrency: int) -> None:
        super().__init__(name="celerynb-heartbeat", daemon=True)
        self.runtime, self.hostname, self.concurrency = runtime, hostname, concurrency
        self.keys = QueueKeys(runtime.settings.queue)
        self.stopped = threading.Event()

    def info(self) -> WorkerInfo:
        state = WorkerState.LEAVING if leaving() else WorkerState.UP
        return WorkerInfo(
            self.hostname,
            self.runtime.incarnation,
            socket.gethostname(),
            os.getpid(),
            self.concurrency,
            state,
            self.runtime.started,
        )

    def run(self) -> None:
        client = plane.connect(self.runtime.settings.backend_url, socket_timeout=5)
        try:
            while not self.stopped.is_set():
                self._beat(client, self.info().encode())
                self.stopped.wait(self.runtime.liveness.heartbeat)
            self._beat(client, "")  # a clean shutdown: out of the registry
        finally:
            client.close()

    def _beat(self, client: redis.Redis, info: str) -> None:
        try:
            member = self.runtime.member(self.hostname)
            scripts.beat(client, self.keys, member, info, keep=24 * 3600)
        except redis.RedisError as exc:
            log.warning("celerynb heartbeat failed: %s", exc)


_heartbeat: Heartbeat | None = None


@signals.worker_init.connect
def _check_settings(**_: object) -> None:
    if _config_error:  # the app could not be configured: it runs with Celery's defaults
        raise SystemExit(f"celerynb worker cannot start: {_config_error}")
    try:
        start()
    except ValueError as exc:
        raise SystemExit(f"celerynb worker cannot start: {exc}") from None
    for name in ("numpy", "pandas"):  # preload before forking the pool
        with contextlib.suppress(ImportError):
            __import__(name)


@signals.worker_process_init.connect
def _child_init(**_: object) -> None:
    context.reset()


_controller: list[object] = []  # the worker's WorkController (its pool), once ready


@signals.worker_ready.connect
def _start_beating(sender: object = None, **_: object) -> None:
    global _heartbeat
    controller = getattr(sender, "controller", None)
    _controller[:] = [controller] if controller is not None else []
    if _runtime is None:
        return
    concurrency = int(getattr(controller, "concurrency", 0) or os.cpu_count() or 1)
    name = str(getattr(sender, "hostname", "") or socket.gethostname())
    _heartbeat = Heartbeat(_runtime, name, concurrency)
    _heartbeat.start()


@signals.task_revoked.connect
def _soft_stopped(
    request: object = None, terminated: bool = False, signum: object = None, **_: object
) -> None:
    """A cancel stopped a task without killing its pool process (``dispatch.revoke``):
    the process is not to be taken for terminated if it dies later, and if it still
    runs the task ``CANCEL_GRACE_S`` from now, it is killed (the pool replaces it)."""
    if not (terminated and signum == signal.Signals[celery_compat.SOFT_STOP] and _controller):
        return
    pool = getattr(_controller[0], "pool", None)
    found = celery_compat.running_job(pool, str(getattr(request, "id", "")))
    if found is None:
        return
    job, pid = found
    celery_compat.forget_soft_stop(pool, pid)
    timer = threading.Timer(CANCEL_GRACE_S, celery_compat.kill_if_running, (job, pid))
    timer.daemon = True
    timer.start()


@signals.worker_shutting_down.connect
def _leave(**_: object) -> None:  # in a signal handler: only flip the flag
    _leaving[0] = 1


@signals.worker_shutdown.connect
def _stop_beating(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stopped.set()
        _heartbeat.join(10)
    if _runtime is not None and _runtime.env.die_with_parent:
        die_with_parent()


def main(argv: list[str] | None = None) -> None:
    """Run a worker with Celery's CLI arguments (``worker`` is implied)."""
    app.worker_main(["worker", *(argv if argv is not None else sys.argv[1:])])


from . import tasks  # noqa: E402  (registers the tasks on app)

__all__ = ["Runtime", "app", "context", "main", "start", "tasks"]
