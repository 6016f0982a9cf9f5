"""Named calls: kept in the store, listed, found again and reattached when their driver is gone.

A named call (``cmap_async(..., name="scores")``) on a detached or remote
cluster writes its description (the call's ``meta`` hash: its chunks' bounds,
its options, a fingerprint of its function and data) and its name in the
queue's registry before its first chunk is queued. Workers see the name there
(``plane/scripts.py``): they go on when its driver stops refreshing the call's
``alive`` key, and keep each chunk's record (and each result kept apart) for
``keep`` seconds. :func:`attach` builds the call again from its description;
its runner reads the records already there, and whatever the ``done`` list
does not bring it (another driver may pop it).
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import redis

from .errors import ChunkInfo, ClusterError
from .join import join
from .options import CallOptions, SlotOptions
from .plane import delete
from .plane.keys import REDUCED, TTL, CallKeys, QueueKeys

if TYPE_CHECKING:
    from redis.client import Pipeline

    from .call import Call
    from .cluster.connection import Cluster
    from .future import MapFuture


# -- a call as the store describes it -------------------------------------------------------------
class StoredPlan:
    """The plan of a call described in the store: its chunks' bounds, nothing of its data."""

    def __init__(self, bounds: list[tuple[int, int]]) -> None:
        self.bounds = bounds

    def __repr__(self) -> str:
        return f"<StoredPlan {len(self)} chunks, {self.n_items} items>"

    @property
    def n_items(self) -> int:
        return self.bounds[-1][1] if self.bounds else 0

    def __len__(self) -> int:
        return len(self.bounds)

    def take(self, index: int) -> object:
        raise RuntimeError("an attached call's chunks are in the store already")

    def items(self, index: int) -> int:
        start, stop = self.bounds[index]
        return stop - start

    def info(self, index: int) -> ChunkInfo:
        start, stop = self.bounds[index]
        return ChunkInfo(index, len(self), start, stop)

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


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _meta(client: redis.Redis, call: str) -> dict[str, str]:
    raw = client.hgetall(CallKeys(call).meta)
    return {_text(k): _text(v) for k, v in raw.items()}


def describe(
    name: str | None, label: str, keep: float, opts: SlotOptions, fp: str
) -> dict[str, str]:
    """The fields of a call's ``meta`` hash when it starts (``name`` None: an unnamed call,
    listed while it runs)."""
    fields = {"label": label, "started": repr(time.time()), "state": "running"}
    if name is not None:
        fields |= {
            "name": name,
            "fingerprint": fp,
            "keep": str(int(keep)),
            "slot": json.dumps(dataclasses.asdict(opts)),
        }
    return fields


def register(pipe: Pipeline, keys: CallKeys, queue: str, fields: dict[str, str]) -> None:
    """Queue the commands that describe a starting call, list it (and name it). The list
    is scored by when a call's description expires at the latest; those past go."""
    ttl = max(TTL, int(fields.get("keep", 0)))
    now = time.time()
    pipe.hset(keys.meta, items=[x for pair in fields.items() for x in pair])
    pipe.expire(keys.meta, ttl)
    pipe.zremrangebyscore(QueueKeys(queue).calls, "-inf", now)
    pipe.zadd(QueueKeys(queue).calls, {keys.call: now + ttl})
    if "name" in fields:
        pipe.hset(QueueKeys(queue).names, fields["name"], keys.call)


def lookup(cluster: Cluster, name: str) -> tuple[str, dict[str, str]] | None:
    """The id and description of the call named ``name`` on ``cluster`` (None: none, or gone)."""
    queue, client = cluster.settings.queue, cluster.redis
    call = _text(client.hget(QueueKeys(queue).names, name))
    if not call:
        return None
    meta = _meta(client, call)
    if meta.get("name") != name:  # expired, or forgotten
        client.hdel(QueueKeys(queue).names, name)
        return None
    return call, meta


def calls(cluster: Cluster | None = None) -> CallList:
    """The calls on ``cluster`` (default: the current one, else the detached cluster or the
    deployment of ``CELERYNB_BROKER_URL``): running ones and named ones still kept,
    newest first."""
    found = target(cluster)
    client, queue = found.redis, found.settings.queue
    ids = [_text(i) for i in client.zrange(QueueKeys(queue).calls, 0, -1)]  # type: ignore[arg-type]
    out = CallList()
    gone = []
    for call in ids:
        meta = _meta(client, call)
        if not meta:
            gone.append(call)
            continue
        out.append(_info(client, call, meta))
    if gone:
        client.zrem(QueueKeys(queue).calls, *gone)
    out.sort(key=lambda c: c.started, reverse=True)
    return out


def _info(client: redis.Redis, call: str, meta: dict[str, str]) -> CallInfo:
    keys = CallKeys(call)
    n_chunks = int(meta.get("n_chunks") or client.get(keys.count) or 0)
    if meta.get("name"):
        done = int(client.hlen(keys.records))
        done -= int(bool(client.hexists(keys.records, -1)))
    else:
        pipe = client.pipeline(transaction=False)
        pipe.llen(keys.pending)
        pipe.hlen(keys.running)
        pending, running = pipe.execute()
        done = max(0, n_chunks - int(pending) - int(running))
    state = meta.get("state", "running")
    if state == "running" and n_chunks and done >= n_chunks and meta.get("name"):
        state = "finished" if meta.get("reduce") != "1" else "running"
    return CallInfo(
        call,
        meta.get("name") or None,
        state,
        min(done, n_chunks) if n_chunks else done,
        n_chunks,
        datetime.fromtimestamp(float(meta.get("started") or 0)),
        meta.get("label", ""),
        meta.get("error", ""),
    )


def target(cluster: Cluster | None) -> Cluster:
    """``cluster``, else the current one, else a connection (detached cluster, environment)."""
    from .cluster import connect, registry

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
    found = lookup(where, name)
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
    meta: dict[str, str],
    *,
    progress: bool | str | None = True,
    timeout: float | None = None,
) -> MapFuture:
    """The future of the stored call ``call_id`` (described by ``meta``), fed from the store."""
    from .call import Call
    from .future import MapFuture
    from .progress import make_display
    from .runner import CallRunner

    name = meta.get("name", call_id)
    state = meta.get("state", "running")
    if state not in ("running", "finished"):
        why = f": {meta['error']}" if meta.get("error") else ""
        raise ClusterError(f"the call {name!r} {state}{why}; run it again (replace=True)")
    if not meta.get("n_chunks"):
        raise ClusterError(
            f"the call {name!r} is incomplete: its driver died before it stored every chunk; "
            "run it again (replace=True)"
        )
    bounds = [tuple(b) for b in json.loads(meta["bounds"])]
    slot = SlotOptions(**json.loads(meta["slot"]))
    options = CallOptions.make(
        progress=progress,
        timeout=timeout,
        output="stream" if slot.output else False,
        output_bytes=slot.output_bytes,
        name=name,
        keep=float(meta["keep"]),
    )
    age = max(0.0, time.time() - float(meta["started"]))
    call = Call(
        StoredPlan(bounds),  # type: ignore[arg-type]
        label=meta.get("label", "cmap"),
        keep=meta.get("reduce") == "1",
        timeout=None if timeout is None else timeout + age,  # from now
    )
    call.id = call_id
    call.started -= age  # the display shows the time since the call started
    runner = CallRunner.attached(cluster, call, options, slot)
    workers = runner.submission.n_workers
    display = make_display(options.progress, call.snapshot(), call.cancel, workers)
    runner.display = display
    cluster.supervisor.add(runner)
    return MapFuture(call, runner.cancel, display, runner)


def forget(name: str, *, cluster: Cluster | None = None) -> None:
    """Delete everything of the call named ``name`` (running calls are stopped: their
    chunks go); KeyError if there is none."""
    found = target(cluster)
    call = lookup(found, name)
    if call is None:
        raise KeyError(f"no call named {name!r} on {found!r}")
    drop(found, call[0], name)


def drop(cluster: Cluster, call: str, name: str | None = None) -> None:
    """Delete everything of ``call`` (its name too), running or not."""
    keys = CallKeys(call)
    client, queue = cluster.redis, cluster.settings.queue
    n_chunks = int(_meta(client, call).get("n_chunks") or client.get(keys.count) or 0)
    delete(client, [*keys.all(n_chunks), keys.meta, keys.records])
    client.zrem(QueueKeys(queue).calls, call)
    if name is not None and _text(client.hget(QueueKeys(queue).names, name)) == call:
        client.hdel(QueueKeys(queue).names, name)


def finish(client: redis.Redis, keys: CallKeys, queue: str, call: Call, keep: float) -> None:
    """A named call's end: its state kept ``keep`` s; its records and results too if it
    finished (else they go), and nothing else of it."""
    ttl = max(1, int(keep))
    error = str(call.error).splitlines()[0] if call.error is not None else ""
    pipe = client.pipeline(transaction=False)
    fields = {"state": call.state.value, "error": error, "ended": repr(time.time())}
    pipe.hset(keys.meta, items=[x for pair in fields.items() for x in pair])
    pipe.expire(keys.meta, ttl)
    pipe.zadd(QueueKeys(queue).calls, {keys.call: time.time() + ttl})
    results = [keys.result(i) for i in [*range(call.n_chunks), REDUCED]]
    if call.state.value == "finished":
        for key in [keys.records, *results]:
            pipe.expire(key, ttl)
    else:
        pipe.unlink(keys.records, *results)
    kept = {keys.meta, keys.records, *results}
    pipe.unlink(*[k for k in keys.all(call.n_chunks) if k not in kept])
    pipe.execute()


def kept_records(client: redis.Redis, keys: CallKeys, wanted: list[int]) -> list[bytes]:
    """A named call's records of chunks ``wanted`` that are in the store (they came before
    this driver attached, or another driver popped them from the done list)."""
    found = client.hmget(keys.records, wanted) if wanted else []
    return [b for b in found if isinstance(b, bytes)]
