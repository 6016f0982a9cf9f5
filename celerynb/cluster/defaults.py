"""Which cluster to use: connect to a deployment, or make the default one."""

from __future__ import annotations

from ..detached import DetachedCluster, state_file
from ..errors import ClusterError
from ..settings import ENV_BROKER, Liveness, Settings
from . import registry
from .connection import Cluster
from .local import LocalCluster


def connect(
    broker_url: str | None = None,
    backend_url: str | None = None,
    *,
    secret: str | None = None,
    queue: str | None = None,
    worker_wait: float | None = None,
    heartbeat_grace: float | None = None,
) -> Cluster:
    """Use an existing deployment for the following ``cmap`` calls.

    With no ``broker_url`` and no ``CELERYNB_BROKER_URL``: the detached cluster
    (``celerynb cluster start``) of this user. Unset arguments come from
    ``CELERYNB_BROKER_URL``, ``CELERYNB_RESULT_BACKEND``,
    ``CELERYNB_SECRET``, ``CELERYNB_QUEUE``, ``CELERYNB_WORKER_WAIT`` and
    ``CELERYNB_HEARTBEAT_GRACE``. ``backend_url`` defaults to the broker URL and
    must be Redis. ``worker_wait``: seconds a call waits for a first worker
    (default 60); ``heartbeat_grace``: seconds without a worker's heartbeat
    before its chunks run elsewhere (default 6). Fails in a few seconds if the
    broker or the store is unreachable (workers may start later).
    """
    if broker_url is None and not Settings.deployment_url():
        found = DetachedCluster.load()
        if found is None:
            raise ClusterError(
                f"connect() needs a broker URL: pass one, set {ENV_BROKER}, or start a "
                f"detached cluster (`celerynb cluster start`; none found at {state_file()})"
            )
        broker_url, secret = found.broker_url, secret or found.secret
    try:
        settings = Settings.from_env(
            broker_url=broker_url, backend_url=backend_url, secret=secret, queue=queue
        )
        liveness = Liveness.from_env(worker_wait=worker_wait, grace=heartbeat_grace)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    cluster = Cluster(settings, liveness=liveness)
    try:
        cluster.check()
    except BaseException:
        cluster.close()
        raise
    registry.set_current(cluster)
    return cluster


def default_cluster() -> Cluster:
    """The current cluster; if there is none, connect (``CELERYNB_BROKER_URL``) or start one."""
    with registry.lock:
        found = registry.current()
        if found is not None:
            return found
        return connect() if Settings.deployment_url() else LocalCluster()
