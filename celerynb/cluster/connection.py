"""A connection to a Celery deployment whose workers run celerynb's tasks."""

from __future__ import annotations

import contextlib
import html
import time
from typing import TYPE_CHECKING, Unpack

import redis
from celery import Celery

import celerynb  # its public names: the Executor, a front end over this cluster's calls

from .. import plane
from ..errors import ClusterError
from ..plane import DataPlane, RedisPlane, ShmPlane, scripts
from ..plane.keys import QueueKeys
from ..plane.records import WorkerInfo, WorkerState, superseded
from ..plane.scripts import Roll
from ..plane.store import CallStore, StoreError
from ..settings import Liveness, Settings, Tuning, make_app, mask_url
from . import registry
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..executor import Executor
    from ..options import CallKwargs
    from ..plane.shm import ShmStore


class Cluster:
    """A connection to a Celery deployment: its Celery app, its Redis store, its workers.

    Made by :func:`connect`; use as a context manager to close it on exit.
    ``shm``: a shared-memory store for big data (embedded clusters only);
    ``liveness``: heartbeat grace, worker wait (default: ``Liveness.from_env()``).
    Workers are known from their heartbeats in the store: a worker that joins
    is seen at once, one that stops beating for ``liveness.grace`` s is dead
    and its chunks run elsewhere.
    """

    kind = "remote"
    elastic = True  # workers may join, leave and die: calls keep a spare message queued
    broker_timeout = 30.0  # seconds a call tolerates an unreachable store before failing

    def __init__(
        self, settings: Settings, shm: ShmStore | None = None, liveness: Liveness | None = None
    ) -> None:
        self.liveness = liveness or Liveness.from_env()
        self._open(settings, shm)

    def _open(self, settings: Settings, shm: ShmStore | None) -> None:
        self.settings = settings
        self.shm = shm
        self.app: Celery = make_app(settings, driver=True)
        self.redis: redis.Redis = plane.connect(settings.backend_url)
        tuning = Tuning.from_env()
        self.plane: DataPlane = (
            ShmPlane(self.redis, settings.secret, shm, max_payload=tuning.max_payload)
            if shm is not None
            else RedisPlane(self.redis, settings.secret, max_payload=tuning.max_payload)
        )
        self.store = CallStore(self.redis, settings.secret, settings.queue, self.plane, tuning)
        self.supervisor = Supervisor(self)
        self.closed = False
        self._roll: tuple[float, Roll] = (0.0, Roll({}, []))
        self._leftovers: list[tuple[float, list[str]]] = []

    # -- what calls need --------------------------------------------------------------------------
    def check(self, timeout: float = 5.0) -> None:
        """Fail fast (ClusterError naming the URL) if the broker or store is unreachable."""
        try:
            self.store.ping()
        except StoreError as exc:
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

    def roll(self, max_age: float = 0.0) -> Roll:
        """The queue's worker registry: who beats, who stopped (reused for ``max_age`` s).

        Members are worker incarnations (``<name>#<incarnation>``). An incarnation is dead
        once it stops beating for ``liveness.grace`` s, or at once when a newer incarnation
        of its name beats (the worker was restarted under its name: the old process is
        gone), unless it is in a warm shutdown, handing its slots over itself.
        """
        stamp, known = self._roll
        if time.monotonic() - stamp >= max_age:
            known = scripts.roll(self.redis, QueueKeys(self.settings.queue), self.liveness.grace)
            infos = [WorkerInfo.decode(member, text) for member, text in known.alive.items()]
            gone = set(superseded(infos))
            if gone:
                alive = {m: text for m, text in known.alive.items() if m not in gone}
                known = Roll(alive, [*known.dead, *sorted(gone)])
            self._roll = (time.monotonic(), known)
        return known

    def workers(self, max_age: float = 0.5) -> dict[str, int]:
        """Worker name -> pool size of the live workers on this cluster's queue, from their
        heartbeats (``max_age``: seconds an earlier reading may be reused). A worker in a
        warm shutdown is not counted."""
        found: dict[str, int] = {}
        for member, text in self.roll(max_age).alive.items():
            info = WorkerInfo.decode(member, text)
            if info.state is not WorkerState.LEAVING:
                found[info.name] = found.get(info.name, 0) + info.concurrency
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

    def executor(self, **options: Unpack[CallKwargs]) -> Executor:
        """A ``concurrent.futures.Executor`` whose work runs on this cluster (see
        :class:`celerynb.Executor` for ``options``); shutting it down leaves the cluster be."""
        return celerynb.Executor(self, **options)

    def ensure_worker(self) -> bool:
        """Replace a dead worker (embedded clusters only); True if one was replaced."""
        return False

    def defer_delete(self, keys: list[str], delay: float = 5.0) -> None:
        """Delete ``keys`` at a sweep ``delay`` s from now (late writers may still come)."""
        if keys:
            self._leftovers.append((time.monotonic() + delay, keys))

    def sweep(self, force: bool = False) -> None:
        """Delete deferred keys whose time has come (all of them with ``force``)."""
        now = time.monotonic()
        due = [keys for when, keys in self._leftovers if force or when <= now]
        self._leftovers = [(w, k) for w, k in self._leftovers if not (force or w <= now)]
        if due:
            with contextlib.suppress(StoreError):
                self.store.delete([k for keys in due for k in keys])

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel this process's calls on it (named calls go on) and drop the connections
        (idempotent); the deployment itself keeps running."""
        registry.forget(self)
        if self.closed:
            return
        for runner in self.supervisor.running():
            if runner.named:  # it goes on without us: attach() finds it again
                runner.detach()
            else:
                runner.cancel("the cluster was closed")
        self.supervisor.stop()
        self.closed = True
        self.sweep(force=True)
        self.store.close()
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
