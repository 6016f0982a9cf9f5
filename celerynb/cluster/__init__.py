"""Clusters: an embedded local one, or a connection to an existing deployment.

``cmap`` uses the *current* cluster (:func:`current`): the one scoped by
:func:`as_current`, else the last one started or connected in this process;
if there is none, :func:`default_cluster` connects to ``CELERYNB_BROKER_URL``
(when set) or starts an embedded ``LocalCluster``.
"""

from __future__ import annotations

from .connection import Cluster
from .defaults import connect, default_cluster
from .local import LocalCluster
from .registry import as_current, current

__all__ = ["Cluster", "LocalCluster", "as_current", "connect", "current", "default_cluster"]
