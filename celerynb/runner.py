"""The I/O of one call on one cluster: plan, store chunks, send tasks, take records, clean up.

A :class:`CallRunner` feeds its :class:`~celerynb.call.Call` with the records
the cluster's supervisor reads for it, and acts on what the call says:
store newly planned chunks, send the reduce task, and, once the call ends,
revoke what still runs and delete the call's data. With no worker yet, the
call waits (the supervisor asks again each tick) until one appears or
``worker_wait`` passes. Every call is launched by :func:`launch`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from . import dispatch
from .call import Call, CallState, Reaction
from .errors import ClusterError, StoreFull
from .future import MapFuture
from .inputs import nbytes
from .options import CallOptions
from .output import Relay
from .plane import codec
from .plane.keys import REDUCED, CallKeys
from .plane.records import CallMeta, Record
from .plane.store import CallBatch, PollReply, PollRequest, StoreError, StoreRefused
from .planning import StreamPlan, Window, make_plan
from .progress import Display, NoDisplay, make_display
from .settings import mask_url
from .streams import Feed
from .submit import Submission

if TYPE_CHECKING:
    from .cluster.connection import Cluster


def launch(runner: CallRunner) -> MapFuture:
    """Start ``runner``'s call (unless it is in the store already), make its display, have
    the cluster's supervisor follow it; its future."""
    runner.start()
    call = runner.call
    display = make_display(
        runner.options.progress, call.snapshot(), call.cancel, runner.submission.n_workers
    )
    runner.follow(display)
    return MapFuture(call, runner.cancel, display, runner)


class CallRunner:
    """Runs ``call`` over ``inputs`` on ``cluster``; ``job`` is the signed job. ``naming``:
    a named call's (name, fingerprint); ``stored``: the description of a call that is in
    the store already (attached: see durable.py)."""

    def __init__(
        self,
        cluster: Cluster,
        call: Call,
        job: bytes,
        options: CallOptions,
        inputs: tuple[object, ...],
        *,
        naming: tuple[str, str] | None = None,
        stored: CallMeta | None = None,
    ) -> None:
        self.cluster, self.call, self.options, self.inputs = cluster, call, options, inputs
        self.store = cluster.store
        self.size = sum(nbytes(x) for x in inputs)
        zipped = len(inputs) > 1 and not options.overlap  # (windows.Overlap unpacks them)
        self.opts = (
            stored.slot
            if stored is not None and stored.slot is not None
            else options.slot(zipped, cluster.plane.shared, watch=cluster.elastic, label=call.label)
        )
        self.keys = CallKeys(call.id)
        self.display: Display = NoDisplay()
        o = options
        self.relay = Relay(
            o.output, o.output_lines, o.output_bytes, by_worker=cluster.elastic, funcs=call.funcs
        )
        attached = stored is not None
        self.submission = Submission(cluster, call, self.keys, self.opts, self.size, attached)
        self.naming = naming  # a named call's (name, fingerprint)
        self.meta = stored  # the call's description in the store (once it began)
        self._seen: set[int] = set()  # chunks (and the reduction) with a record
        self._job = job
        self._sent_reduce: tuple[list[int], int] | None = None  # the last reduce task sent
        self.feed: Feed | None = None  # stores the chunks as the workers take them
        self.window: Window | None = None  # how much of the call the store holds at once
        self._since = time.monotonic()
        settings = cluster.settings
        call.waiting_for = (
            f"waiting for a worker on queue {settings.queue!r} of {mask_url(settings.broker_url)}"
        )
        call.on_end(self._ended)

    def __repr__(self) -> str:
        return f"<CallRunner {self.call!r} on {self.cluster!r}>"

    @classmethod
    def attached(
        cls, cluster: Cluster, call: Call, options: CallOptions, meta: CallMeta
    ) -> CallRunner:
        """The runner of a named call that is in the store already (see durable.py)."""
        naming = (options.name or call.id, "")
        return cls(cluster, call, b"", options, (), naming=naming, stored=meta)

    @property
    def named(self) -> bool:
        return self.naming is not None

    @property
    def name(self) -> str | None:
        return self.naming[0] if self.naming is not None else None

    # -- submission -------------------------------------------------------------------------------
    def start(self) -> None:
        """Plan and store the call and send its tasks, if there are workers (else it waits);
        nothing for a call in the store already."""
        if self.submission.stored:
            return
        fix = "pass big objects as data"
        self.store.check_size(self._job, "func (with everything it refers to)", fix)
        workers = self.cluster.workers()
        if workers:
            self._begin(sum(workers.values()))

    def follow(self, display: Display) -> None:
        """Show the call on ``display`` and have the supervisor route its records."""
        self.display = display
        self.cluster.supervisor.add(self)

    def _window(self, n_workers: int) -> Window:
        """The call's window: bytes in files (embedded), or under the store's maxmemory."""
        ahead = self.options.max_ahead
        room = self.cluster.plane.file_room()
        if room is not None:
            return Window.of_files(room, ahead)
        return Window.of_store(n_workers, self.store.memory().free, ahead)

    def _begin(self, n_workers: int) -> None:
        try:
            self._start(n_workers)
        except StoreFull as exc:
            self.call.fail(exc)
            raise

    def _start(self, n_workers: int) -> None:
        o = self.options
        self.window = window = self._window(n_workers)
        plan, planner = make_plan(
            self.inputs,
            n_workers,
            self.size,
            o.chunks,
            o.chunk_size,
            fixed=o.reduce is not None or self.named,  # a named call is stored whole at once
            overlap=o.overlap,
            max_chunk_bytes=window.chunk_bytes,
        )
        if isinstance(plan, StreamPlan) and window.chunks is None:
            self.window = window = replace(window, chunks=2 * n_workers)
        self.submission.n_workers = n_workers
        if not self.call.begin(plan, planner):
            return
        meta = CallMeta(self.call.label, time.time(), "running")
        if self.naming is not None:
            name, fp = self.naming
            spans = [plan.info(i) for i in range(len(plan))]
            meta = replace(
                meta,
                name=name,
                fingerprint=fp,
                keep=int(o.keep_seconds),
                slot=self.opts,
                bounds=tuple((int(c.start), int(c.stop)) for c in spans),
                reduce=self.call.keep,
            )
        self.meta = meta
        if self.named:  # stored whole, then it can be attached to (see durable.py)
            try:
                self.submission.store(range(len(plan)), job=self._job, publish=True, meta=meta)
            except StoreRefused as exc:
                raise self.full(self.size, "the whole input (a named call)", exc) from None
            self.meta = replace(meta, n_chunks=len(plan))
            self.store.update(self.keys, self.meta, "n_chunks")
        else:
            self.feed = Feed(self, plan, window, self.size, n_workers)
            self.feed.begin(self._job, meta)

    # -- what its feed needs (streams.FeedHost) ---------------------------------------------------
    def batch(self) -> CallBatch:
        return self.submission.batch()

    def flush(self, batch: CallBatch, queued: list[int], last: bool, closing: bool = False) -> None:
        self.submission.flush(batch, queued, last, closing)

    def start_draining(self, n_queued: int) -> None:
        """Draining tasks: one per pool process with the first chunks (one per chunk with
        ``chunk_timeout``, as they are queued)."""
        feed = self.feed
        if self.opts.one:
            self.submission.publish(n_queued, spare=feed is None or not feed.draining)
        elif feed is None or not feed.draining:
            n_workers = self.submission.n_workers
            wanted = n_workers if feed is None or feed.streaming else len(self.call.plan)
            self.submission.publish(min(n_workers, max(wanted, 1)))

    def pending(self) -> int:
        return self.store.pending(self.keys)

    def full(self, needed: int, what: str, cause: BaseException | None = None) -> StoreFull:
        """The error of a store at its maxmemory that cannot take ``needed`` bytes of ``what``."""
        try:
            memory = self.store.memory().describe()
        except StoreError:
            memory = "its memory unknown"
        mib, window = 2**20, self.window
        held = (
            f"; this call keeps at most {window.bytes / mib:.0f} MiB of chunks of up to "
            f"{window.chunk_bytes / mib:.0f} MiB in it"
            if window is not None
            else ""
        )
        said = f" (Redis: {str(cause).splitlines()[0][-120:]})" if cause is not None else ""
        return StoreFull(
            f"the store at {mask_url(self.cluster.settings.backend_url)} is full "
            f"({memory}): it cannot take {needed / mib:.1f} MiB for {what}{held}{said}. "
            "Pass a smaller chunk_size= (or more chunks=), a smaller max_ahead=, or give the "
            "store a bigger maxmemory (redis-server --maxmemory, or CONFIG SET maxmemory)"
        )

    def drop_stored(self) -> None:
        with contextlib.suppress(StoreError):
            self.store.delete_call(self.keys, self.call.n_chunks)

    # -- what the supervisor drives ---------------------------------------------------------------
    def poll_waiting(self, now: float) -> None:
        """A waiting call: start it once a worker appears, fail it after ``worker_wait``."""
        workers = self.cluster.workers(max_age=0.25)
        if workers:
            self._begin(sum(workers.values()))
        elif now - self._since > self.cluster.liveness.worker_wait:
            s = self.cluster.settings
            self.call.fail(
                ClusterError(
                    f"no celerynb worker answers on queue {s.queue!r} of broker "
                    f"{mask_url(s.broker_url)} (waited {now - self._since:.0f} s): start one "
                    "with `celerynb worker --broker URL` and the same CELERYNB_SECRET"
                )
            )
        self.display.update(self.call.snapshot())

    def poll_request(self) -> PollRequest:
        """What this call wants from the supervisor's next tick."""
        grace = int(self.cluster.liveness.driver_grace)
        stored = self.feed is None or self.feed.all_stored  # else the call stays open
        return PollRequest(self.keys, grace, self.call.planned and stored, self.named)

    def receive(self, reply: PollReply) -> None:
        """Take one poll's reply: relay output, fetch and decode records, feed the call, act."""
        blobs = reply.records
        if self.named:  # never reaped; records may be in the store that did not come here
            if reply.kept > len(self._seen) + len(blobs):
                wanted = [i for i in range(self.call.n_chunks) if i not in self._seen]
                wanted += [REDUCED] if self.call.keep else []
                blobs += self.store.kept_records(self.keys, wanted)
        elif not reply.alive and self.submission.stored and not blobs:  # its workers reaped it
            grace = self.cluster.liveness.driver_grace
            why = f"its driver gave no sign of life for {grace:.0f} s (was it suspended?)"
            self.call.fail(ClusterError(f"the workers dropped this call: {why}"))
            return
        if reply.output:
            self.relay.take(self.store.outputs(reply.output))
        records: list[Record] = []
        for blob in blobs:
            record: Record = codec.loads(self.cluster.settings.secret, blob)
            record.meta.bytes_out += len(blob)
            if self.feed is None or not self.feed.takes(record):  # partial reductions
                records.append(record)
        del blobs
        records = [r for r in records if r.index not in self._seen]  # twins
        self._seen.update(r.index for r in records)
        if records:
            records = self.cluster.plane.fetch(self.keys, records, keep=self.named)
        if self.feed is not None:  # their chunks (and results) left the store: room
            self.feed.done([r.index for r in records if r.index >= 0])
        self.act(self.call.receive(records, reply.running))
        if not isinstance(self.display, NoDisplay):
            self.display.update(self.call.snapshot())

    def act(self, reaction: Reaction) -> None:
        """Do what the call says: store newly planned chunks, send a reduction."""
        feed = self.feed
        if feed is not None and feed.expecting and self.call.planned:  # on the feeder's thread
            feed.extend(reaction.store)
        if feed is not None and feed.streaming:  # an iterator's parts are reduced as they come
            due = feed.reduction_due()
            if due is not None:
                self.send_reduce(*due)
        elif reaction.reduce and self._sent_reduce is None:
            self.send_reduce(list(range(self.call.n_chunks)), REDUCED)

    def send_reduce(self, parts: list[int], out: int) -> None:
        """A reduce task over stored ``parts``, into ``out`` (the result, or a partial one
        that an open iterator's draining tasks make: they hold the pool processes)."""
        self._sent_reduce = (parts, out)
        if out != REDUCED and self.call.streaming and self.feed is not None:
            self.store.push_fold(self.keys, parts, out)
            return
        app, queue = self.cluster.app, self.cluster.settings.queue
        dispatch.publish_reduce(app, queue, self.keys, parts, self.opts.shm, out)

    def workers_lost(self, dead: list[str]) -> None:
        """Workers stopped beating: their slots' chunks go back to the queue, fresh draining
        tasks replace them (and a lost reduce task is sent again)."""
        if self.call.state is not CallState.RUNNING or not self.submission.stored:
            return
        moved = self.store.requeue(self.keys, dead)
        if moved:
            self.submission.publish(moved)
        if self._sent_reduce is not None:  # it may have been on that worker
            self.send_reduce(*self._sent_reduce)

    def worker_restarted(self) -> None:
        """The embedded worker died and was replaced: re-send what it held."""
        if self.call.state is not CallState.RUNNING:
            return
        if self._sent_reduce is not None:
            self.send_reduce(*self._sent_reduce)
            return
        held = self.store.held_slots(self.keys)
        done = self.call.snapshot().chunks_done
        self.submission.publish(self.call.n_chunks - done, held)

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        """Revoke the outstanding chunks and stop running ones; False if already done."""
        return self.call.cancel(reason)

    # -- the end ----------------------------------------------------------------------------------
    def detach(self) -> None:
        """Stop following a named call (this driver goes away); the workers go on with it."""
        self.cluster.supervisor.remove(self)
        self.relay.close()
        self.display.close(self.call.snapshot())

    def forget(self) -> None:
        """Delete everything of the call from the store (its name too)."""
        self.store.drop(self.call.id, self.name)

    def _ended(self, call: Call) -> None:
        """Once the call ends (any thread): stop its work, delete its data, close the display."""
        if call.state is not CallState.FINISHED:
            self._revoke()
        with contextlib.suppress(StoreError):
            # output that came after the last poll; an anonymous call's data goes too
            self.relay.take(self.store.end(self.keys, call.n_chunks, keep=self.named))
        self.relay.close()
        self.display.close(call.snapshot())
        if self.named:
            error = (str(call.error).splitlines() or [""])[0] if call.error is not None else ""
            ending = CallMeta(state=call.state.value, error=error, ended=time.time())
            with contextlib.suppress(StoreError):
                self.store.finish(self.keys, ending, call.n_chunks, self.options.keep_seconds)
        self.cluster.supervisor.remove(self)

    def _revoke(self) -> None:
        """Queued chunks become no-ops (their keys go first); running ones are stopped
        (``dispatch.revoke``; killed by their worker if they ignore that)."""
        with contextlib.suppress(StoreError):
            ids = [self.keys.slot_task(s) for s in self.store.revoke(self.keys, self.call.n_chunks)]
            if self._sent_reduce is not None:
                ids.append(self.keys.reduce_task)
            # Celery records revoked tasks in the backend: remove those records later
            self.cluster.defer_delete(dispatch.revoke(self.cluster.app, ids))
