"""The Celery app that workers run (``celerynb worker``, or ``celery -A celerynb.worker worker``).

Settings come from the ``CELERYNB_*`` variables. The tasks are in ``tasks``:
one draining task for every call's chunks and one reduce task.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import OrderedDict

import redis
from celery import Celery, signals

from .. import plane
from ..cluster.procs import die_with_parent
from ..plane import DataPlane, RedisPlane, ShmPlane, codec, scripts
from ..plane.codec import Job
from ..settings import ENV_SHM_DIR, Settings, make_app

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
            if shm:
                from ..plane.shm import ShmStore

                directory = os.environ.get(ENV_SHM_DIR)
                if not directory:
                    raise RuntimeError(
                        "this worker has no CELERYNB_SHM_DIR: it is not the embedded one"
                    )
                found = ShmPlane(self.redis, self.secret, ShmStore(directory, self.secret))
            else:
                found = RedisPlane(self.redis, self.secret)
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
    if os.environ.get("CELERYNB_DIE_WITH_PARENT"):
        die_with_parent()


def main(argv: list[str] | None = None) -> None:
    """Run a worker with Celery's CLI arguments (``worker`` is implied)."""
    app.worker_main(["worker", *(argv if argv is not None else sys.argv[1:])])


from . import tasks  # noqa: E402  (registers the tasks on app)

__all__ = ["app", "context", "main", "settings", "tasks"]
