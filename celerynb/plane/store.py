"""The stores: every Redis command about calls, typed, in one place.

One :class:`CallStore` per cluster (``Cluster.store``) owns the Redis client,
the secret, the queue's registries, the :class:`~celerynb.plane.DataPlane`
and the limits (``settings.Tuning``). A call's chunks are stored through a
:class:`CallBatch` (one round trip per batch); the supervisor's tick is one
:meth:`CallStore.poll` for every call in flight (a :class:`PollRequest` in,
a :class:`PollReply` out per call); named calls are described by a
:class:`~celerynb.plane.records.CallMeta` and listed in the queue's
registries. A worker's pool process has a :class:`WorkerStore` (the
commands of its draining and reduce tasks), and :func:`ping` checks that a
server answers. Redis errors come out as :data:`StoreError` (a lost
connection: :data:`StoreUnreachable`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis

from . import DataPlane, check_size, connect, delete, scripts
from .keys import REDUCED, TTL, CallKeys, QueueKeys, running_pattern
from .records import CallMeta, FoldRequest, OutputBatch
from .scripts import Report, Taken

if TYPE_CHECKING:
    from redis.client import Pipeline

    from ..settings import Tuning

StoreError = redis.RedisError  # any failure of the store
StoreUnreachable = redis.ConnectionError  # the store does not answer
StoreRefused = redis.exceptions.OutOfMemoryError  # at its maxmemory, the store refuses writes

OPEN_SECONDS = 10  # workers stop waiting for an open call's chunks when its driver is gone
POP_MAX = 1000  # records (or output batches) taken from a call's list per poll
LAST_OUTPUT = 10_000  # output batches taken when a call ends


@dataclass(frozen=True)
class PollRequest:
    """What one call wants from a supervisor's tick: its ``alive`` key refreshed for
    ``grace`` s, its ``open`` key too while not every chunk is ``planned``, its records,
    running count and output; a ``named`` call also its count of records kept."""

    keys: CallKeys
    grace: int
    planned: bool
    named: bool


@dataclass(frozen=True)
class PollReply:
    """One call's share of a tick: ``alive`` is False once its workers dropped it (its
    ``alive`` key was gone); ``records`` and ``output`` are still encoded; ``kept``: a
    named call's records in the store (0 for others)."""

    alive: bool
    records: list[bytes]
    running: int
    output: list[bytes]
    kept: int = 0


@dataclass(frozen=True)
class StoreMemory:
    """The store's memory as ``INFO memory`` says: ``maxmemory`` (0: no limit) and
    ``used`` bytes."""

    maxmemory: int
    used: int

    @property
    def free(self) -> int | None:
        """Bytes left under ``maxmemory`` (None: no limit)."""
        return max(0, self.maxmemory - self.used) if self.maxmemory else None

    def describe(self) -> str:
        if not self.maxmemory:
            return "no maxmemory"
        mib = 2**20
        return f"maxmemory {self.maxmemory / mib:.0f} MiB, {self.used / mib:.0f} MiB used"


@dataclass(frozen=True)
class CallStatus:
    """A call listed in the queue's registry: its description and how far it got."""

    id: str
    meta: CallMeta
    n_chunks: int
    done: int


class CallBatch:
    """Commands about one call's keys, sent in one round trip by :meth:`execute`."""

    def __init__(self, store: CallStore, keys: CallKeys) -> None:
        self.store, self.keys = store, keys
        self._pipe: Pipeline = store.redis.pipeline(transaction=False)

    def __repr__(self) -> str:
        return f"<CallBatch of {self.keys.call} ({len(self._pipe)} commands)>"

    def describe(self, meta: CallMeta) -> None:
        """Write the call's description, list it (and name it) on the queue. The list is
        scored by when a call's description expires at the latest; those past go."""
        ttl, now = max(TTL, meta.keep or 0), time.time()
        fields = meta.to_fields()
        pipe, queue = self._pipe, self.store.queue_keys
        pipe.hset(self.keys.meta, items=[x for pair in fields.items() for x in pair])
        pipe.expire(self.keys.meta, ttl)
        pipe.zremrangebyscore(queue.calls, "-inf", now)
        pipe.zadd(queue.calls, {self.keys.call: now + ttl})
        scripts.extend(self.store.redis, pipe, queue.calls, ttl)
        if meta.name is not None:
            pipe.hset(queue.names, meta.name, self.keys.call)
            scripts.extend(self.store.redis, pipe, queue.names, ttl)

    def job(self, blob: bytes) -> None:
        """The signed job (its function, reducer and extra arguments)."""
        self._pipe.set(self.keys.func, blob, ex=TTL)

    def count(self, n_chunks: int) -> None:
        """How many chunks are stored (what a reaper deletes)."""
        self._pipe.set(self.keys.count, n_chunks, ex=TTL)

    def chunk(self, index: int, obj: object, big: bool, what: str) -> int:
        """Chunk ``index`` (through the plane: a file, or a key here); its bytes."""
        return self.store.plane.put_chunk(self._pipe, self.keys, index, obj, big, what)

    def keep_alive(self, grace: int) -> None:
        """The driver's sign of life, good for ``grace`` s (its workers keep the call)."""
        self._pipe.set(self.keys.alive, 1, ex=grace)

    def queue(self, indices: list[int]) -> None:
        """Chunk numbers the draining tasks may take."""
        if indices:
            self._pipe.rpush(self.keys.pending, *indices)
            self._pipe.expire(self.keys.pending, TTL)

    def open(self) -> None:
        """More chunks may come: the draining tasks wait for them."""
        self._pipe.set(self.keys.open, 1, ex=OPEN_SECONDS)

    def close(self) -> None:
        """No more chunks come."""
        self._pipe.unlink(self.keys.open)

    def execute(self) -> None:
        self._pipe.execute()


class CallStore:
    """The store of one cluster's calls (driver side), on ``client`` for ``queue``."""

    def __init__(
        self, client: redis.Redis, secret: str, queue: str, plane: DataPlane, tuning: Tuning
    ) -> None:
        self.redis, self.secret, self.plane, self.tuning = client, secret, plane, tuning
        self.queue_keys = QueueKeys(queue)

    def __repr__(self) -> str:
        return f"<CallStore of queue {self.queue_keys.queue!r} on {self.plane!r}>"

    def memory(self) -> StoreMemory:
        """The store's ``maxmemory`` and memory used (``INFO memory``: some managed Redis
        refuse ``CONFIG GET``); no limit if the server does not say."""
        try:
            info = self.redis.info("memory")
        except redis.ResponseError:
            return StoreMemory(0, 0)
        return StoreMemory(int(info.get("maxmemory", 0) or 0), int(info.get("used_memory", 0)))

    def check_size(self, blob: bytes, what: str, fix: str) -> None:
        """PayloadTooLarge if ``blob`` is over the store's limit (``Tuning.max_payload``)."""
        check_size(blob, what, fix, self.tuning.max_payload)

    # -- storing a call ---------------------------------------------------------------------------
    def batch(self, keys: CallKeys) -> CallBatch:
        """A batch of commands about the call of ``keys`` (one round trip)."""
        return CallBatch(self, keys)

    def update(self, keys: CallKeys, meta: CallMeta, *fields: str) -> None:
        """Write ``fields`` of the call's description."""
        items = meta.to_fields(*fields)
        self.redis.hset(keys.meta, items=[x for pair in items.items() for x in pair])

    def pending(self, keys: CallKeys) -> int:
        """Chunks stored that no draining task has taken yet."""
        return int(self.redis.llen(keys.pending))

    def push_fold(self, keys: CallKeys, parts: list[int], out: int) -> None:
        """Ask the call's draining tasks for a partial reduction of ``parts`` into ``out``."""
        self.redis.rpush(keys.folds, FoldRequest(parts, out).encode(self.secret))

    # -- following calls --------------------------------------------------------------------------
    def poll(self, calls: list[PollRequest], wake: str, timeout: float) -> list[PollReply]:
        """One round trip for every call in flight: refresh their signs of life, wait up to
        ``timeout`` s for a record on any of them (or a push on ``wake``), then take the
        rest of their records, running counts and output. StoreUnreachable if it is."""
        pipe = self.redis.pipeline(transaction=False)
        for c in calls:
            pipe.expire(c.keys.alive, c.grace)
        for c in calls:
            if not c.planned:  # the probes' draining tasks wait for more
                pipe.expire(c.keys.open, OPEN_SECONDS)
        pipe.blpop([c.keys.done for c in calls] + [wake], timeout=timeout)
        for c in calls:
            pipe.lpop(c.keys.done, POP_MAX)
            pipe.hlen(c.keys.running)
            pipe.lpop(c.keys.output, POP_MAX)
            if c.named:  # never reaped; records may be in the store that did not come here
                pipe.hlen(c.keys.records)
        replies = iter(pipe.execute())
        alive = [bool(next(replies)) for _ in calls]
        for c in calls:
            if not c.planned:
                next(replies)
        first = next(replies)
        popped = _text(first[0]) if first is not None else ""
        out = []
        for c, refreshed in zip(calls, alive, strict=True):
            blobs = [first[1]] if popped == c.keys.done else []
            more, busy, output = next(replies), next(replies), next(replies)
            kept = int(next(replies) or 0) if c.named else 0
            out.append(
                PollReply(refreshed, blobs + (more or []), int(busy or 0), output or [], kept)
            )
        return out

    def wake(self, key: str) -> None:
        """End a poll's wait on ``key`` at once."""
        self.redis.rpush(key, 1)

    def outputs(self, blobs: list[bytes]) -> list[OutputBatch]:
        """Output batches as they came in a poll, verified and decoded."""
        return self.plane.pop_output(blobs)

    def kept_records(self, keys: CallKeys, wanted: list[int]) -> list[bytes]:
        """A named call's records of chunks ``wanted`` that are in the store (they came before
        this driver attached, or another driver popped them from the done list)."""
        found = self.redis.hmget(keys.records, wanted) if wanted else []
        return [b for b in found if isinstance(b, bytes)]

    def requeue(self, keys: CallKeys, dead: list[str]) -> int:
        """The chunks the ``dead`` workers ran go back to the queue; how many slots that was."""
        return scripts.requeue(self.redis, keys, dead)

    def held_slots(self, keys: CallKeys) -> list[str]:
        """The slots that hold a chunk (their draining task resumes it)."""
        return [_text(s) for s in self.redis.hkeys(keys.slots)]

    # -- the end of a call ------------------------------------------------------------------------
    def revoke(self, keys: CallKeys, n_chunks: int) -> list[str]:
        """Queued chunks become no-ops (their keys go); the slots running a chunk."""
        pipe = self.redis.pipeline(transaction=False)
        delete(self.redis, [keys.chunk(i) for i in range(n_chunks)], pipe=pipe)
        pipe.hvals(keys.running)
        running = pipe.execute()[-1]
        return sorted({_text(s) for s in running})

    def end(self, keys: CallKeys, n_chunks: int, keep: bool) -> list[OutputBatch]:
        """The output that came after the last poll; unless ``keep``, the call's data goes."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpop(keys.output, LAST_OUTPUT)
        if not keep:
            self.plane.delete_call(keys, n_chunks, pipe)
        left = pipe.execute()[0] or []
        return self.plane.pop_output(list(left))

    def delete_call(self, keys: CallKeys, n_chunks: int) -> None:
        """Everything the call stored."""
        self.plane.delete_call(keys, n_chunks)

    def finish(self, keys: CallKeys, meta: CallMeta, n_chunks: int, keep: float) -> None:
        """A named call's end (``meta``: its state, error and end): its description kept
        ``keep`` s; its records and results too if it finished (else they go), and nothing
        else of it."""
        ttl = max(1, int(keep))
        fields = meta.to_fields("state", "error", "ended")
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.meta, items=[x for pair in fields.items() for x in pair])
        pipe.expire(keys.meta, ttl)
        pipe.zadd(self.queue_keys.calls, {keys.call: time.time() + ttl})
        scripts.extend(self.redis, pipe, self.queue_keys.calls, ttl)
        scripts.extend(self.redis, pipe, self.queue_keys.names, ttl)  # (a named call's end)
        results = [keys.result(i) for i in [*range(n_chunks), REDUCED]]
        if meta.state == "finished":
            for key in [keys.records, *results]:
                pipe.expire(key, ttl)
        else:
            pipe.unlink(keys.records, *results)
        kept = {keys.meta, keys.records, *results}
        pipe.unlink(*[k for k in keys.all(n_chunks) if k not in kept])
        pipe.execute()

    # -- the queue's registries -------------------------------------------------------------------
    def meta(self, call: str) -> CallMeta | None:
        """The description of ``call`` (None: there is none, or it expired)."""
        raw = self.redis.hgetall(CallKeys(call).meta)
        return CallMeta.from_fields(raw) if raw else None

    def lookup(self, name: str) -> tuple[str, CallMeta] | None:
        """The id and description of the call named ``name`` (None: none, or gone)."""
        call = _text(self.redis.hget(self.queue_keys.names, name) or b"")
        if not call:
            return None
        meta = self.meta(call)
        if meta is None or meta.name != name:  # expired, or forgotten
            self.redis.hdel(self.queue_keys.names, name)
            return None
        return call, meta

    def listed(self) -> list[CallStatus]:
        """The calls in the queue's registry (those whose description is gone leave it)."""
        found = cast(list[bytes], self.redis.zrange(self.queue_keys.calls, 0, -1))
        ids = [_text(i) for i in found]
        pipe = self.redis.pipeline(transaction=False)
        for call in ids:
            keys = CallKeys(call)
            pipe.hgetall(keys.meta)
            pipe.get(keys.count)
            pipe.hlen(keys.records)
            pipe.hexists(keys.records, REDUCED)
            pipe.llen(keys.pending)
            pipe.hlen(keys.running)
        replies = iter(pipe.execute() if ids else [])
        out, gone = [], []
        for call in ids:
            raw, count, kept, reduced, pending, running = (next(replies) for _ in range(6))
            if not raw:
                gone.append(call)
                continue
            meta = CallMeta.from_fields(raw)
            n_chunks = meta.n_chunks or int(count or 0)
            if meta.name:
                done = int(kept) - int(bool(reduced))
            else:
                done = max(0, n_chunks - int(pending) - int(running))
            out.append(CallStatus(call, meta, n_chunks, done))
        if gone:
            self.redis.zrem(self.queue_keys.calls, *gone)
        return out

    def drop(self, call: str, name: str | None = None) -> None:
        """Delete everything of ``call`` (its name too), running or not."""
        keys = CallKeys(call)
        meta = self.meta(call)
        n_chunks = (meta.n_chunks if meta else None) or int(self.redis.get(keys.count) or 0)
        delete(self.redis, [*keys.all(n_chunks), keys.meta, keys.records])
        self.redis.zrem(self.queue_keys.calls, call)
        names = self.queue_keys.names
        if name is not None and _text(self.redis.hget(names, name) or b"") == call:
            self.redis.hdel(names, name)

    # -- the whole store --------------------------------------------------------------------------
    def ping(self) -> None:
        self.redis.ping()

    def delete(self, keys: Iterable[str]) -> None:
        """Unlink ``keys`` (one round trip)."""
        delete(self.redis, keys)

    def running_chunks(self) -> int:
        """Chunks that workers run now, over every call on this store."""
        keys = list(self.redis.scan_iter(match=running_pattern(), count=1000))
        if not keys:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hlen(key)
        return int(sum(pipe.execute()))

    def queue_length(self, lists: list[str], url: str | None = None) -> int:
        """Messages in the broker's ``lists`` (a Redis broker): on this store, or at ``url``."""
        client = self.redis if url is None else redis.Redis.from_url(url)
        try:
            pipe = client.pipeline(transaction=False)
            for name in lists:
                pipe.llen(name)
            return int(sum(pipe.execute()))
        finally:
            if url is not None:
                client.close()

    def close(self) -> None:
        self.redis.close()


class WorkerStore:
    """The store as a worker's pool process uses it (its draining and reduce tasks), on
    ``client``; fold requests are verified with ``secret``. One round trip per method."""

    def __init__(self, client: redis.Redis, secret: str) -> None:
        self.redis, self.secret = client, secret

    def __repr__(self) -> str:
        return f"<WorkerStore on {self.redis!r}>"

    def take(
        self,
        keys: CallKeys,
        slot: str,
        report: Report | None,
        *,
        take: bool,
        have_job: bool,
        inline_max: int,
        worker: str,
        watch: bool,
    ) -> Taken:
        """Report the chunk ``report`` ran and (``take``) take the slot's next one: see
        :func:`~celerynb.plane.scripts.next_chunk`."""
        return scripts.next_chunk(
            self.redis,
            keys,
            slot,
            report,
            take=take,
            have_job=have_job,
            inline_max=inline_max,
            worker=worker,
            watch=watch,
        )

    def wanted(self, keys: CallKeys, index: int) -> bool:
        """Whether chunk ``index`` is still wanted (its key is deleted when the call is
        cancelled or ends)."""
        return bool(self.redis.exists(keys.chunk(index)))

    def wait_for_chunks(self, keys: CallKeys, seconds: float) -> None:
        """Wait up to ``seconds`` for an open call to queue a chunk (none is taken: the
        list's last chunk number rotates to its head)."""
        self.redis.brpoplpush(keys.pending, keys.pending, timeout=seconds)

    def reap(self, keys: CallKeys) -> None:
        """Delete everything of a call whose driver is gone."""
        scripts.reap(self.redis, keys)

    def job_blob(self, keys: CallKeys) -> bytes | None:
        """The call's signed job (None: it is gone)."""
        return cast("bytes | None", self.redis.get(keys.func))

    def drop_results(self, keys: CallKeys, parts: Iterable[int]) -> None:
        """Unlink the result keys of ``parts`` (reduced: the driver never reads them)."""
        delete(self.redis, [keys.result(i) for i in parts])

    def park(self, keys: CallKeys, index: int, value: bytes) -> None:
        """Keep chunk ``index``'s result ``value`` apart for the driver (:data:`StoreRefused`
        when the store is full)."""
        self.redis.set(keys.result(index), value, ex=TTL)

    def push_record(self, keys: CallKeys, index: int, record: bytes, parked: bytes) -> bool:
        """Push a record (a reducer's) and park its value unless the call is gone."""
        return scripts.push_record(self.redis, keys, index, record, parked)

    def pop_fold(self, keys: CallKeys) -> FoldRequest | None:
        """The next partial reduction the call's driver asked for (None: there is none)."""
        blob = cast("bytes | None", self.redis.lpop(keys.folds))
        return FoldRequest.decode(self.secret, blob) if blob else None


def ping(url: str, timeout: float) -> None:
    """Return if the Redis server at ``url`` answers a PING within ``timeout`` s; else
    raise :data:`StoreError` (:data:`StoreUnreachable`: nothing answers there)."""
    client = connect(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
