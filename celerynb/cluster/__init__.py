"""Clusters: an embedded local one, or a connection to an existing deployment.

``cmap`` uses the *current* cluster (:func:`current`): the one scoped by
:func:`as_current`, else the last one started or connected in this process;
if there is none, :func:`default_cluster` connects to ``CELERYNB_BROKER_URL``
(when set) or starts an embedded ``LocalCluster``. (Imported on first use,
so that a worker importing ``cluster.procs`` loads nothing else.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {
    "Cluster": "connection",
    "LocalCluster": "local",
    "as_current": "registry",
    "current": "registry",
    "connect": "defaults",
    "default_cluster": "defaults",
}

if TYPE_CHECKING:
    from .connection import Cluster
    from .defaults import connect, default_cluster
    from .local import LocalCluster
    from .registry import as_current, current


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'celerynb.cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["Cluster", "LocalCluster", "as_current", "connect", "current", "default_cluster"]
