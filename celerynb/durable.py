"""Named calls: kept in the store, listed, found again and reattached when their driver is gone.

A named call (``cmap_async(..., name="scores")``) on a detached or remote
cluster writes its description (a ``CallMeta``: its chunks' bounds, its
options, a fingerprint of its function and data) and its name in the queue's
registry (``plane/store.py``) before its first chunk is queued. Workers see the name there
(``plane/scripts.py``): they go on when its driver stops refreshing the call's
``alive`` key, and keep each chunk's record (and each result kept apart) for
``keep`` seconds. :func:`attach` builds the call again from its description;
its runner reads the records already there, and whatever the ``done`` list
does not bring it (another driver may pop it).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .call import Call
from .cluster import connect, registry
from .errors import ClusterError
from .join import join
from .options import CallOptions
from .plane.records import CallMeta
from .plane.store import CallStatus
from .runner import CallRunner, launch
from .spans import Spans

if TYPE_CHECKING:
    from .cluster.connection import Cluster
    from .future import MapFuture


# -- a call as the store describes it -------------------------------------------------------------
class StoredPlan(Spans):
    """The plan of a call described in the store: its chunks' bounds, nothing of its data."""

    def __repr__(self) -> str:
        return f"<StoredPlan {len(self)} chunks, {self.n_items} items>"

    def take(self, index: int) -> object:
        raise RuntimeError("an attached call's chunks are in the store already")

    def join(self, parts: list[object]) -> object:
        return join(parts)


@dataclass(frozen=True)
class CallInfo:
    """One call on a cluster, as :func:`calls` lists it."""

    id: str
    name: str | None
    state: str
    chunks_done: int
    n_chunks: int
    started: datetime
    function: str
    message: str = ""  # how a failed call failed

    def __repr__(self) -> str:
        who = repr(self.name) if self.name else self.id[:8]
        return f"<CallInfo {who} {self.state}: {self.chunks_done}/{self.n_chunks} chunks>"


class CallList(list[CallInfo]):
    """The calls on a cluster, newest first (an HTML table in notebooks)."""

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th>{h}</th>" for h in ("name", "state", "chunks", "started", "function", "id")
        )
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    c.name or "",
                    c.state + (f": {c.message}" if c.message else ""),
                    f"{c.chunks_done}/{c.n_chunks}",
                    c.started.strftime("%Y-%m-%d %H:%M:%S"),
                    c.function,
                    c.id[:8],
                )
            )
            + "</tr>"
            for c in self
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def calls(cluster: Cluster | None = None) -> CallList:
    """The calls on ``cluster`` (default: the current one, else the detached cluster or the
    deployment of ``CELERYNB_BROKER_URL``): running ones and named ones still kept,
    newest first."""
    out = CallList(_info(status) for status in target(cluster).store.listed())
    out.sort(key=lambda c: c.started, reverse=True)
    return out


def _info(status: CallStatus) -> CallInfo:
    meta, n_chunks, done = status.meta, status.n_chunks, status.done
    state = meta.state
    if state == "running" and n_chunks and done >= n_chunks and meta.name:
        state = "running" if meta.reduce else "finished"
    return CallInfo(
        status.id,
        meta.name or None,
        state,
        min(done, n_chunks) if n_chunks else done,
        n_chunks,
        datetime.fromtimestamp(meta.started),
        meta.label,
        meta.error or "",
    )


def target(cluster: Cluster | None) -> Cluster:
    """``cluster``, else the current one, else a connection (detached cluster, environment)."""
    found = cluster or registry.current() or connect()
    if not found.elastic:
        raise ClusterError(
            f"{found!r} is an embedded cluster: it dies with this kernel and keeps no named "
            "calls. Start a detached one (`celerynb cluster start` in a terminal, or "
            "%celerynb start --detach) and celerynb.connect() to it, or connect to a deployment"
        )
    return found


def attach(
    name: str,
    *,
    cluster: Cluster | None = None,
    progress: bool | str | None = True,
    timeout: float | None = None,
) -> MapFuture:
    """The :class:`MapFuture` of the call named ``name`` (running or finished) on ``cluster``
    (default as for :func:`calls`): its progress resumes, ``result()`` joins its parts as
    the original call would have. ``timeout``: seconds from now, as ``cmap``'s."""
    where = target(cluster)
    found = where.store.lookup(name)
    if found is None:
        known = sorted(c.name for c in calls(where) if c.name)
        raise KeyError(
            f"no call named {name!r} on {where!r} (it expired, was forgotten, or never ran "
            f"there); named calls there: {known or 'none'}"
        )
    return resume(where, *found, progress=progress, timeout=timeout)


def resume(
    cluster: Cluster,
    call_id: str,
    meta: CallMeta,
    *,
    progress: bool | str | None = True,
    timeout: float | None = None,
) -> MapFuture:
    """The future of the stored call ``call_id`` (described by ``meta``), fed from the store."""
    name = meta.name or call_id
    if meta.state not in ("running", "finished"):
        why = f": {meta.error}" if meta.error else ""
        raise ClusterError(f"the call {name!r} {meta.state}{why}; run it again (replace=True)")
    if not meta.n_chunks or meta.bounds is None or meta.slot is None:
        raise ClusterError(
            f"the call {name!r} is incomplete: its driver died before it stored every chunk; "
            "run it again (replace=True)"
        )
    slot = meta.slot
    options = CallOptions.make(
        progress=progress,
        timeout=timeout,
        output="stream" if slot.output else False,
        output_bytes=slot.output_bytes,
        name=name,
        keep=float(meta.keep or 0),
    )
    age = max(0.0, time.time() - meta.started)
    call = Call(
        StoredPlan(list(meta.bounds)),  # type: ignore[arg-type]
        label=meta.label or "cmap",
        keep=bool(meta.reduce),
        timeout=None if timeout is None else timeout + age,  # from now
    )
    call.id = call_id
    call.started -= age  # the display shows the time since the call started
    return launch(CallRunner.attached(cluster, call, options, meta))


def forget(name: str, *, cluster: Cluster | None = None) -> None:
    """Delete everything of the call named ``name`` (running calls are stopped: their
    chunks go); KeyError if there is none."""
    found = target(cluster)
    call = found.store.lookup(name)
    if call is None:
        raise KeyError(f"no call named {name!r} on {found!r}")
    found.store.drop(call[0], name)
