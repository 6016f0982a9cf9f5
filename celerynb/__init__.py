"""celerynb: parallel pandas / NumPy work on Celery, from a notebook.

>>> from celerynb import cmap
>>> out = cmap(func, df)   # first call starts an embedded cluster
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING

from .join import join  # light; and a submodule of the same name must not shadow it

# Public names and the modules that define them, imported on first use: a
# worker process imports only what it runs, not the driver's side.
_PUBLIC = {
    "cmap": "api",
    "cmap_async": "api",
    "Cluster": "cluster",
    "LocalCluster": "cluster",
    "as_current": "cluster",
    "connect": "cluster",
    "current": "cluster",
    "default_cluster": "cluster",
    "AlignmentWarning": "errors",
    "ReductionWarning": "errors",
    "CallTimeout": "errors",
    "CancelledError": "errors",
    "CelerynbError": "errors",
    "ChunkError": "errors",
    "ChunkInfo": "errors",
    "ClusterError": "errors",
    "PayloadTooLarge": "errors",
    "SignatureError": "errors",
    "StoreFull": "errors",
    "VersionMismatch": "errors",
    "MapFuture": "future",
    "CallOptions": "options",
    "CallInfo": "durable",
    "attach": "durable",
    "calls": "durable",
    "forget": "durable",
    "read_csv": "sources",
    "read_json": "sources",
    "read_parquet": "sources",
    "Executor": "executor",
    "register_joblib": "joblib_backend",
}

if TYPE_CHECKING:
    from .api import cmap, cmap_async
    from .cluster import Cluster, LocalCluster, as_current, connect, current, default_cluster
    from .durable import CallInfo, attach, calls, forget
    from .errors import (
        AlignmentWarning,
        CallTimeout,
        CancelledError,
        CelerynbError,
        ChunkError,
        ChunkInfo,
        ClusterError,
        PayloadTooLarge,
        ReductionWarning,
        SignatureError,
        StoreFull,
        VersionMismatch,
    )
    from .executor import Executor
    from .future import MapFuture
    from .joblib_backend import register_joblib
    from .options import CallOptions
    from .sources import read_csv, read_json, read_parquet


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'celerynb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext celerynb``: register the ``%celerynb`` magic (starts nothing)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext celerynb``: stop an embedded cluster the magics started."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "AlignmentWarning",
    "CallInfo",
    "CallOptions",
    "CallTimeout",
    "CancelledError",
    "CelerynbError",
    "ChunkError",
    "ChunkInfo",
    "Cluster",
    "ClusterError",
    "Executor",
    "LocalCluster",
    "MapFuture",
    "PayloadTooLarge",
    "ReductionWarning",
    "SignatureError",
    "StoreFull",
    "VersionMismatch",
    "__version__",
    "as_current",
    "attach",
    "calls",
    "cmap",
    "cmap_async",
    "connect",
    "current",
    "default_cluster",
    "forget",
    "join",
    "read_csv",
    "read_json",
    "read_parquet",
    "register_joblib",
]
