"""The Celery app that workers run (``celerynb worker``, or ``celery -A celerynb.worker worker``).

Settings come from the ``CELERYNB_*`` variables. The tasks are in ``tasks``:
one draining task for every call's chunks and one reduce task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import socket
import sys
import threading
from collections import OrderedDict

import redis
from celery import Celery, signals

from .. import plane
from ..plane import DataPlane, RedisPlane, ShmPlane, codec, scripts
from ..plane.codec import Job
from ..plane.keys import QueueKeys
from ..procs import die_with_parent
from ..settings import ENV_SHM_DIR, Liveness, Settings, Tuning, make_app

log = logging.getLogger(__name__)

try:
    settings: Settings | None = Settings.from_env()
    _config_error = ""
except ValueError as exc:
    settings, _config_error = None, str(exc)

app: Celery = make_app(settings) if settings else Celery("celerynb", set_as_current=False)


class Context:
    """What one pool process keeps between tasks: its Redis client, data planes, recent jobs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (a freshly forked pool process makes its own clients)."""
        self._client: redis.Redis | None = None
        self._planes: dict[bool, DataPlane] = {}
        self.jobs: OrderedDict[str, Job] = OrderedDict()  # the last few calls' jobs
        scripts.forget_clients()

    @property
    def secret(self) -> str:
        assert settings is not None
        return settings.secret

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            assert settings is not None
            self._client = plane.connect(settings.backend_url)
        return self._client

    def plane(self, shm: bool) -> DataPlane:
        """The Redis plane, or (``shm``) the embedded cluster's shared-memory plane."""
        found = self._planes.get(shm)
        if found is None:
            limit = Tuning.from_env().max_payload
            if shm:
                from ..plane.shm import ShmStore

                directory = os.environ.get(ENV_SHM_DIR)
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

    def __init__(self, hostname: str, concurrency: int) -> None:
        super().__init__(name="celerynb-heartbeat", daemon=True)
        assert settings is not None
        self.hostname, self.concurrency = hostname, concurrency
        self.keys = QueueKeys(settings.queue)
        self.interval = Liveness.from_env().heartbeat
        self.stopped = threading.Event()

    def info(self) -> str:
        state = "leaving" if leaving() else "up"
        host, pid = socket.gethostname(), os.getpid()
        return json.dumps(
            {"concurrency": self.concurrency, "state": state, "host": host, "pid": pid}
        )

    def run(self) -> None:
        assert settings is not None
        client = plane.connect(settings.backend_url, socket_timeout=5)
        try:
            while not self.stopped.is_set():
                self._beat(client, self.info())
                self.stopped.wait(self.interval)
            self._beat(client, "")  # a clean shutdown: out of the registry
        finally:
            client.close()

    def _beat(self, client: redis.Redis, info: str) -> None:
        try:
            scripts.beat(client, self.keys, self.hostname, info, keep=24 * 3600)
        except redis.RedisError as exc:
            log.warning("celerynb heartbeat failed: %s", exc)


_heartbeat: Heartbeat | None = None


@signals.worker_init.connect
def _check_settings(**_: object) -> None:
    if settings is None:
        raise SystemExit(f"celerynb worker cannot start: {_config_error}")
    for name in ("numpy", "pandas"):  # preload before forking the pool
        with contextlib.suppress(ImportError):
            __import__(name)


@signals.worker_process_init.connect
def _child_init(**_: object) -> None:
    context.reset()


@signals.worker_ready.connect
def _start_beating(sender: object = None, **_: object) -> None:
    global _heartbeat
    if settings is None:
        return
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", 0) or os.cpu_count() or 1)
    _heartbeat = Heartbeat(
        str(getattr(sender, "hostname", "") or socket.gethostname()), concurrency
    )
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _leave(**_: object) -> None:  # in a signal handler: only flip the flag
    _leaving[0] = 1


@signals.worker_shutdown.connect
def _stop_beating(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stopped.set()
        _heartbeat.join(10)
    if os.environ.get("CELERYNB_DIE_WITH_PARENT"):
        die_with_parent()


def main(argv: list[str] | None = None) -> None:
    """Run a worker with Celery's CLI arguments (``worker`` is implied)."""
    app.worker_main(["worker", *(argv if argv is not None else sys.argv[1:])])


from . import tasks  # noqa: E402  (registers the tasks on app)

__all__ = ["app", "context", "main", "settings", "tasks"]
