"""Which cluster ``cmap`` uses: the one scoped by ``as_current``, else the last one made."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Cluster

_last: Cluster | None = None
_scoped: ContextVar[Cluster | None] = ContextVar("celerynb_cluster", default=None)
lock = threading.RLock()  # held while the default cluster is made


def current() -> Cluster | None:
    """The cluster ``cmap`` uses now (None if there is none; this starts nothing).

    Inside ``with as_current(cluster):`` that cluster; else the last one
    started or connected in this process, unless it was closed.
    """
    scoped = _scoped.get()
    if scoped is not None and not scoped.closed:
        return scoped
    last = _last
    return last if last is not None and not last.closed else None


def set_current(cluster: Cluster) -> None:
    """Make ``cluster`` the one ``cmap`` uses from now on."""
    global _last
    with lock:
        _last = cluster


def forget(cluster: Cluster) -> None:
    """``cluster`` is closed: it is current no more."""
    global _last
    with lock:
        if _last is cluster:
            _last = None


@contextlib.contextmanager
def as_current(cluster: Cluster) -> Iterator[Cluster]:
    """Use ``cluster`` for the calls in this block (this thread or task), then the previous one."""
    token = _scoped.set(cluster)
    try:
        yield cluster
    finally:
        _scoped.reset(token)
