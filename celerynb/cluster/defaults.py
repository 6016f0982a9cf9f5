"""Which cluster to use: connect to a deployment, or make the default one."""

from __future__ import annotations

import os

from ..errors import ClusterError
from ..settings import ENV_BROKER, Settings
from . import registry
from .connection import Cluster
from .local import LocalCluster


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
    registry.set_current(cluster)
    return cluster


def default_cluster() -> Cluster:
    """The current cluster; if there is none, connect (``CELERYNB_BROKER_URL``) or start one."""
    with registry.lock:
        found = registry.current()
        if found is not None:
            return found
        return connect() if os.environ.get(ENV_BROKER) else LocalCluster()
