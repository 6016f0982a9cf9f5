"""celerynb: parallel pandas / NumPy work on Celery, from a notebook.

>>> from celerynb import cmap
>>> out = cmap(func, df)   # first call starts an embedded cluster
"""

from __future__ import annotations

from .api import MapFuture, cmap, cmap_async
from .chunking import join
from .cluster import Cluster, LocalCluster, connect, current
from .errors import CancelledError, CelerynbError, ChunkError, ClusterError

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext celerynb``: register the ``%celerynb`` magic (starts nothing)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext celerynb``: stop an embedded cluster the magics started."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "CancelledError",
    "CelerynbError",
    "ChunkError",
    "Cluster",
    "ClusterError",
    "LocalCluster",
    "MapFuture",
    "__version__",
    "cmap",
    "cmap_async",
    "connect",
    "current",
    "join",
]
